# serial.s - polled COM1 (16550) output/input and number formatting.
#
# Output: poll LSR.THRE then write THR.  The poll is bounded so that a UART
# model that never reports THRE cannot hang the guest (the byte is then
# written anyway).  Input: poll LSR.DR then read RBR, with a short `pause`
# back-off between polls so a waiting guest causes few port-I/O exits and
# executes few instructions per poll on an emulating host.
#
# All routines preserve every register except the documented result (%eax).

        .include "tiny.inc"
        .text

# serial_init: no interrupts from the UART, we poll.
        .globl serial_init
serial_init:
        push    %eax
        push    %edx
        mov     $UART_IER, %dx
        xor     %al, %al
        out     %al, %dx
        pop     %edx
        pop     %eax
        ret

# serial_putc: %al = byte to send.
        .globl serial_putc
serial_putc:
        push    %ecx
        push    %edx
        push    %eax
        mov     $UART_LSR, %dx
        mov     $0x10000, %ecx          # bounded wait for THR empty
1:      in      %dx, %al
        test    $LSR_THRE, %al
        jnz     2f
        pause
        dec     %ecx
        jnz     1b
2:      pop     %eax
        mov     $UART_THR, %dx
        out     %al, %dx
        pop     %edx
        pop     %ecx
        ret

# serial_puts: %esi = NUL-terminated string.
        .globl serial_puts
serial_puts:
        push    %ecx
        mov     $-1, %ecx
        call    serial_putsn
        pop     %ecx
        ret

# serial_putsn: %esi = NUL-terminated string, %ecx = maximum bytes to send.
        .globl serial_putsn
serial_putsn:
        push    %eax
        push    %ecx
        push    %esi
        jecxz   2f
1:      lodsb
        test    %al, %al
        jz      2f
        call    serial_putc
        loop    1b
2:      pop     %esi
        pop     %ecx
        pop     %eax
        ret

# serial_drain: wait (bounded) until the transmitter is completely idle, so
# the last line is really out before we power off / reset / fault.
        .globl serial_drain
serial_drain:
        push    %eax
        push    %ecx
        push    %edx
        mov     $UART_LSR, %dx
        mov     $0x10000, %ecx
1:      in      %dx, %al
        test    $LSR_TEMT, %al
        jnz     2f
        pause
        dec     %ecx
        jnz     1b
2:      pop     %edx
        pop     %ecx
        pop     %eax
        ret

# serial_try_getc: %eax = received byte (0..255), or -1 if none is waiting.
        .globl serial_try_getc
serial_try_getc:
        push    %edx
        mov     $UART_LSR, %dx
        in      %dx, %al
        test    $LSR_DR, %al
        jz      1f
        mov     $UART_RBR, %dx
        xor     %eax, %eax
        in      %dx, %al
        pop     %edx
        ret
1:      mov     $-1, %eax
        pop     %edx
        ret

# serial_getc: block until a byte arrives; %eax = byte.
        .globl serial_getc
serial_getc:
1:      call    serial_try_getc
        cmp     $-1, %eax
        jne     2f
        PAUSE_N 64                      # back-off: ~64 instructions per poll
        jmp     1b
2:      ret

# print_hex8: %al as two lower-case hex digits.
        .globl print_hex8
print_hex8:
        push    %eax
        push    %eax
        shr     $4, %al
        call    print_nibble
        pop     %eax
        call    print_nibble
        pop     %eax
        ret

# print_hex32: %eax as eight lower-case hex digits.
        .globl print_hex32
print_hex32:
        push    %eax
        push    %ecx
        mov     $8, %ecx
1:      rol     $4, %eax
        call    print_nibble
        loop    1b
        pop     %ecx
        pop     %eax
        ret

# print_nibble: low 4 bits of %al as one hex digit.
print_nibble:
        push    %eax
        and     $0x0f, %al
        add     $'0', %al
        cmp     $'9', %al
        jbe     1f
        add     $('a' - '0' - 10), %al
1:      call    serial_putc
        pop     %eax
        ret

# print_dec: %eax as an unsigned decimal number.
        .globl print_dec
print_dec:
        push    %eax
        push    %ecx
        push    %edx
        push    %ebx
        mov     $10, %ebx
        xor     %ecx, %ecx
1:      xor     %edx, %edx              # push digits least significant first
        div     %ebx
        push    %edx
        inc     %ecx
        test    %eax, %eax
        jnz     1b
2:      pop     %eax
        add     $'0', %al
        call    serial_putc
        loop    2b
        pop     %ebx
        pop     %edx
        pop     %ecx
        pop     %eax
        ret

# print_dec2: %eax (0..99) as exactly two decimal digits (leading zero).
        .globl print_dec2
print_dec2:
        push    %eax
        cmp     $10, %eax
        jae     1f
        push    %eax
        mov     $'0', %al
        call    serial_putc
        pop     %eax
1:      call    print_dec
        pop     %eax
        ret
