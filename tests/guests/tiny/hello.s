# hello - the smallest useful guest: proves PVH boot, COM1 output, access to
# hvm_start_info / the kernel command line, and ACPI S5 power-off.
#
# Serial output:
#   HANGAR-TINY hello start
#   hello from hangar tiny guest
#   cmdline=<kernel command line, possibly empty>
# then powers off (the VMM exits 0).

        .include "tiny.inc"
        GUEST_NAME hello
        .text

        .globl main
main:
        PRINT   "hello from hangar tiny guest\n"

        # Only complain if %ebx did not point at hvm_start_info: a correct
        # VMM never produces this line.
        call    start_info_ok
        test    %eax, %eax
        jnz     1f
        PRINT   "warning: no hvm_start_info (ebx=0x"
        mov     start_info, %eax
        call    print_hex32
        PRINT   ")\n"

1:      PRINT   "cmdline="
        call    cmdline_get
        mov     %eax, %esi
        mov     $4096, %ecx             # a missing NUL must not run away
        call    serial_putsn
        PRINT   "\n"

        jmp     poweroff
