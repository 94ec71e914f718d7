# powerbutton - ACPI fixed-hardware power button.
#
# Enables PWRBTN_EN (bit 8 of PM1_EN, port 0x602) and polls PWRBTN_STS
# (bit 8 of PM1_STS, port 0x600).  When the VMM "presses" the button (sets
# the status bit; it also raises the SCI on IRQ 9, which we leave masked and
# ignore - polling is simpler), the guest acknowledges it by writing 1 to the
# status bit, reports it and powers off via S5, like an OS would on an ACPI
# power-button event.
#
# Serial output:
#   HANGAR-TINY powerbutton start
#   waiting for power button
#   power button pressed
# then powers off.

        .include "tiny.inc"
        GUEST_NAME powerbutton
        .text

        .globl main
main:
        # Clear a stale status first (write-1-to-clear, touch only bit 8),
        # then enable the event.
        mov     $PM1_STS, %dx
        mov     $PWRBTN_BIT, %ax
        out     %ax, %dx
        mov     $PM1_EN, %dx
        in      %dx, %ax
        or      $PWRBTN_BIT, %ax
        out     %ax, %dx

        PRINT   "waiting for power button\n"

        mov     $PM1_STS, %dx
1:      in      %dx, %ax
        test    $PWRBTN_BIT, %ax
        jnz     2f
        PAUSE_N 64                      # back-off between port reads
        jmp     1b

2:      mov     $PWRBTN_BIT, %ax        # acknowledge: write 1 to clear
        out     %ax, %dx
        PRINT   "power button pressed\n"
        jmp     poweroff
