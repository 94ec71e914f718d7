# echo - COM1 input path: polls the UART and echoes every received byte.
#
# Serial output:
#   HANGAR-TINY echo start
#   ready
#   <every byte received, echoed back unchanged, except 'q'>
#   bye
# 'q' is not echoed; it makes the guest print "bye" on a line of its own
# (preceded by "\n" if the echoed text did not end with a newline) and power
# off via S5.

        .include "tiny.inc"
        GUEST_NAME echo
        .text

        .globl main
main:
        PRINT   "ready\n"
        mov     $'\n', %bl              # last byte echoed (start: "at line start")
1:      call    serial_getc             # polls with a short pause back-off
        cmp     $'q', %al
        je      2f
        call    serial_putc
        mov     %al, %bl
        jmp     1b

2:      cmp     $'\n', %bl
        je      3f
        PRINT   "\n"
3:      PRINT   "bye\n"
        jmp     poweroff
