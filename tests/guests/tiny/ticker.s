# ticker - a guest that never halts, for testing pause/resume: it prints
# "tick <n>" (n = 1, 2, 3, ...) forever, busy-waiting between ticks.  While
# the VM is paused no tick may appear; after resume the count continues
# where it left off (no tick is lost or repeated).
#
# The delay is a `pause` loop of `delay=N` iterations (kernel command line,
# default 100000, about 0.5 M instructions), so it yields a few ticks per
# second on a host that emulates guest instructions (~0.75 M instr/s) and
# many more on a fast one.  Every 1024 iterations COM1 is polled: a 'q' makes
# the guest print "bye" and power off via S5.
#
# Serial output:
#   HANGAR-TINY ticker start
#   tick 1
#   tick 2
#   ...
#   bye            (after 'q' was received)

        .include "tiny.inc"
        GUEST_NAME ticker
        .text

        .globl main
main:
        mov     $delay_key, %esi
        mov     $100000, %eax
        call    cmdline_uint
        test    %eax, %eax
        jnz     1f
        inc     %eax                    # delay=0 would wrap around
1:      mov     %eax, %edi              # %edi = delay iterations per tick
        mov     $1, %ebx                # %ebx = tick number

tick:   PRINT   "tick "
        mov     %ebx, %eax
        call    print_dec
        PRINT   "\n"
        inc     %ebx

        mov     %edi, %ecx
2:      pause
        test    $1023, %ecx             # now and then: did someone say 'q'?
        jnz     3f
        call    serial_try_getc
        cmp     $'q', %eax
        je      quit
3:      dec     %ecx
        jnz     2b
        jmp     tick

quit:   PRINT   "bye\n"
        jmp     poweroff

        .section .rodata, "a"
delay_key:
        .asciz  "delay="
