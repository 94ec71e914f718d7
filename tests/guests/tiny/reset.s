# reset - guest-initiated reset through the i8042 keyboard controller.
#
# After "boot" it waits for a byte on COM1:
#   'r' -> prints "resetting" and writes 0xFE to port 0x64 (pulse reset
#          line); the VMM reboots the VM, so "HANGAR-TINY reset start"
#          appears again;
#   'q' -> prints "bye" and powers off via S5;
#   anything else is ignored.
#
# Serial output:
#   HANGAR-TINY reset start
#   boot
#   resetting | bye

        .include "tiny.inc"
        GUEST_NAME reset
        .text

        .globl main
main:
        PRINT   "boot\n"
1:      call    serial_getc
        cmp     $'r', %al
        je      2f
        cmp     $'q', %al
        jne     1b
        PRINT   "bye\n"
        jmp     poweroff

2:      PRINT   "resetting\n"
        jmp     i8042_reset
