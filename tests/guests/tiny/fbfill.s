# fbfill - redraws the whole framebuffer, frame after frame, as fast as it can:
# for the display stream's full-screen throughput.
#
# Kernel command line: pixels=N, the screen's width x height (default
# 1024*768; pass 2073600 for --display 1920x1080).  Frame n fills all N
# pixels from FRAMEBUFFER with the value n, then prints "frame n".  With
# page=1 it writes only the first pixel of every 4 KiB page instead: to the
# dirty log (and so to the damage pipeline) that is a full-screen update, at
# a 1024th of the cost on a host that emulates guest instructions.  COM1 is
# polled after every frame: 'q' prints "bye" and powers off.
#
# Serial output:
#   HANGAR-TINY fbfill start
#   frame 1
#   frame 2
#   ...

        .include "tiny.inc"
        GUEST_NAME fbfill
        .text

        .globl main
main:
        mov     $pixels_key, %esi
        mov     $(FB_WIDTH * FB_HEIGHT), %eax
        call    cmdline_uint
        mov     %eax, %esi              # %esi = pixels per frame
        push    %esi
        mov     $page_key, %esi
        xor     %eax, %eax
        call    cmdline_uint
        pop     %esi
        mov     %eax, %ebp              # %ebp = one pixel per page?
        mov     $1, %ebx                # %ebx = frame

frame:  mov     $FRAMEBUFFER, %edi
        mov     %esi, %ecx
        mov     %ebx, %eax
        cld
        test    %ebp, %ebp
        jnz     1f
        rep stosl
        jmp     2f
1:      shr     $10, %ecx               # pages = pixels / 1024, rounded up
        inc     %ecx
3:      mov     %eax, (%edi)
        add     $4096, %edi
        loop    3b
2:        PRINT   "frame "
        mov     %ebx, %eax
        call    print_dec
        PRINT   "\n"
        inc     %ebx
        call    serial_try_getc
        cmp     $'q', %eax
        jne     frame
        PRINT   "bye\n"
        jmp     poweroff

        .section .rodata, "a"
pixels_key:
        .asciz  "pixels="
page_key:
        .asciz  "page="
