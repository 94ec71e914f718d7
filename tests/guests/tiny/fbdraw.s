# fbdraw - draws a known pattern into the linear framebuffer on request.
#
# Needs hangar-vmm --display 1024x768 (FB_STRIDE 4096: one page per row).
# On 'd' from COM1 it fills rows 100..163 (64 rows, all 1024 pixels) and
# prints "drawn <pass>"; pass counts from 1.  Pixel value of row r in pass p:
#       0x00ff0000 | (r << 8) | p          (x8r8g8b8: red ff, green r, blue p)
# so every pass changes every pixel of those rows and nothing else.  'q'
# prints "bye" and powers off; other bytes are ignored.
#
# Serial output:
#   HANGAR-TINY fbdraw start
#   fb ready
#   drawn 1
#   ...
#   bye

        .include "tiny.inc"
        GUEST_NAME fbdraw
        .text

        .equ FIRST_ROW, 100
        .equ ROWS,      64

        .globl main
main:
        PRINT   "fb ready\n"
        xor     %ebx, %ebx              # %ebx = pass
1:      call    serial_getc
        cmp     $'q', %al
        je      3f
        cmp     $'d', %al
        jne     1b

        inc     %ebx
        mov     $FIRST_ROW, %edx        # %edx = row
2:      mov     %edx, %eax              # pixel = 0xff0000 | row << 8 | pass
        shl     $8, %eax
        or      $0x00ff0000, %eax
        or      %ebx, %eax
        mov     %edx, %edi
        shl     $12, %edi               # row * FB_STRIDE
        add     $FRAMEBUFFER, %edi
        mov     $FB_WIDTH, %ecx
        cld
        rep stosl
        inc     %edx
        cmp     $(FIRST_ROW + ROWS), %edx
        jne     2b

        PRINT   "drawn "
        mov     %ebx, %eax
        call    print_dec
        PRINT   "\n"
        jmp     1b

3:      PRINT   "bye\n"
        jmp     poweroff
