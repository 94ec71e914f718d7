# kbd - i8042 keyboard input path (scancodes), by polling.
#
# Bytes already waiting in the controller (e.g. left by firmware) are
# flushed first and reported as "flushed=0xNN".  Then, for every byte the
# controller delivers: keyboard bytes are printed as "scancode=0xNN", bytes
# from the aux (mouse) port (status bit 5) as "aux=0xNN".  A 'q' make code -
# 0x10 in scancode set 1 (translated) or 0x15 in set 2 - prints "bye" and
# powers off via S5.  The controller is not reprogrammed, so whatever
# scancode set / translation the VMM presents is reported as-is.
#
# Serial output:
#   HANGAR-TINY kbd start
#   kbd ready
#   scancode=0x1e
#   scancode=0x9e
#   ...
#   scancode=0x10
#   bye

        .include "tiny.inc"
        GUEST_NAME kbd
        .text

        .globl main
main:
        mov     $16, %ecx               # flush at most 16 stale bytes
1:      in      $I8042_STATUS, %al
        test    $I8042_OBF, %al
        jz      2f
        in      $I8042_DATA, %al
        PRINT   "flushed=0x"
        call    print_hex8
        PRINT   "\n"
        loop    1b

2:      PRINT   "kbd ready\n"
3:      in      $I8042_STATUS, %al
        test    $I8042_OBF, %al
        jnz     4f
        PAUSE_N 64                      # back-off between port reads
        jmp     3b

4:      mov     %al, %bl                # status, for the aux bit
        in      $I8042_DATA, %al
        test    $I8042_AUXB, %bl
        jz      5f
        PRINT   "aux=0x"
        call    print_hex8
        PRINT   "\n"
        jmp     3b

5:      PRINT   "scancode=0x"
        call    print_hex8
        PRINT   "\n"
        cmp     $0x10, %al              # set 1 'q' make
        je      6f
        cmp     $0x15, %al              # set 2 'q' make
        jne     3b
6:      PRINT   "bye\n"
        jmp     poweroff
