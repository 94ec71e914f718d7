# power.s - ways for a tiny guest to end: ACPI S5 power-off, i8042 reset,
# and halting forever.

        .include "tiny.inc"
        .text

# poweroff: enter ACPI sleep state S5 by writing SLP_TYP=5 | SLP_EN to
# PM1a_CNT (port 0x604).  hangar-vmm then exits with status 0.  Does not
# return: if the write has no effect we halt forever.
        .globl poweroff
poweroff:
        cli
        call    serial_drain
        mov     $PM1_CNT, %dx
        mov     $((SLP_TYP_S5 << 10) | SLP_EN), %ax
        out     %ax, %dx
        # A VMM may act on the request asynchronously (QEMU does), so
        # printing a "failed" message here could be a false alarm: just
        # halt.  If the VM never exits, the request was ignored.
        jmp     halt_forever

# i8042_reset: pulse the CPU reset line through the keyboard controller
# (command 0xFE on port 0x64).  hangar-vmm reboots the guest.  Does not
# return.
        .globl i8042_reset
i8042_reset:
        cli
        call    serial_drain
        mov     $0x10000, %ecx          # bounded wait for the input buffer
1:      in      $I8042_STATUS, %al
        test    $I8042_IBF, %al
        jz      2f
        pause
        loop    1b
2:      mov     $I8042_CMD_RESET, %al
        out     %al, $I8042_CMD
        jmp     halt_forever            # (the reset may be asynchronous)

# halt_forever: interrupts off, hlt in a loop.  Costs no instructions while
# halted (only NMIs/SMIs could wake us, hence the loop).
        .globl halt_forever
halt_forever:
        cli
1:      hlt
        jmp     1b
