# fbtick - draws one framebuffer row per tick, forever: for the display
# stream under load (stalled clients must not stop it).
#
# Needs hangar-vmm --display 1024x768.  Tick n fills row (n mod 768) with the
# pixel value n, then prints "tick n".  Between ticks it spins `delay=N`
# (kernel command line, default 20000) pause loops, polling COM1 every 1024:
# 'q' prints "bye" and powers off.
#
# Serial output:
#   HANGAR-TINY fbtick start
#   tick 1
#   tick 2
#   ...

        .include "tiny.inc"
        GUEST_NAME fbtick
        .text

        .globl main
main:
        mov     $delay_key, %esi
        mov     $20000, %eax
        call    cmdline_uint
        test    %eax, %eax
        jnz     1f
        inc     %eax
1:      mov     %eax, %esi              # %esi = delay
        mov     $1, %ebx                # %ebx = tick

tick:   mov     %ebx, %eax              # row = tick mod FB_HEIGHT
        xor     %edx, %edx
        mov     $FB_HEIGHT, %ecx
        div     %ecx
        mov     %edx, %edi
        shl     $12, %edi
        add     $FRAMEBUFFER, %edi
        mov     %ebx, %eax
        mov     $FB_WIDTH, %ecx
        cld
        rep stosl

        PRINT   "tick "
        mov     %ebx, %eax
        call    print_dec
        PRINT   "\n"
        inc     %ebx

        mov     %esi, %ecx
2:      pause
        test    $1023, %ecx
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
