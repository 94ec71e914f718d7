# rtc - reads the CMOS real-time clock.
#
# Waits for the update-in-progress flag (status A bit 7) to be clear, reads
# the time/date registers, and repeats until two consecutive reads agree (so
# we never print a half-updated time).  Values are decoded from BCD unless
# status B bit 2 (DM) says binary; a 12-hour clock (status B bit 1 clear) is
# converted to 24 hours.  The century comes from register 0x32 when it holds
# a plausible value (19..21), else 20 is assumed.
#
# Serial output:
#   HANGAR-TINY rtc start
#   rtc=YYYY-MM-DD hh:mm:ss
# then powers off.

        .include "tiny.inc"
        GUEST_NAME rtc

        .equ RTC_SEC,     0x00
        .equ RTC_MIN,     0x02
        .equ RTC_HOUR,    0x04
        .equ RTC_DAY,     0x07
        .equ RTC_MONTH,   0x08
        .equ RTC_YEAR,    0x09
        .equ RTC_CENTURY, 0x32
        .equ RTC_STATUSA, 0x0a
        .equ RTC_STATUSB, 0x0b
        .equ NFIELDS,     7

        .text

# cmos_read: %al = register index -> %eax = value.
cmos_read:
        out     %al, $CMOS_INDEX        # bit 7 clear: NMIs stay enabled
        xor     %eax, %eax
        in      $CMOS_DATA, %al
        ret

# read_all: wait (bounded) for !UIP, then read the fields into buf[].
read_all:
        mov     $10000, %ecx
1:      mov     $RTC_STATUSA, %al
        call    cmos_read
        test    $0x80, %al
        jz      2f
        pause
        loop    1b
2:      xor     %ecx, %ecx
3:      mov     regs(%ecx), %al
        call    cmos_read
        mov     %al, buf(%ecx)
        inc     %ecx
        cmp     $NFIELDS, %ecx
        jb      3b
        ret

# decode: %eax = raw register value -> %eax = binary value.
decode:
        testb   $0x04, status_b         # DM: 1 = binary already
        jnz     1f
        push    %ecx                    # BCD: (v >> 4) * 10 + (v & 15)
        mov     %eax, %ecx
        shr     $4, %eax
        imul    $10, %eax
        and     $0x0f, %ecx
        add     %ecx, %eax
        pop     %ecx
1:      ret

        .globl main
main:
        mov     $RTC_STATUSB, %al
        call    cmos_read
        mov     %al, status_b

        # Read until two consecutive snapshots agree (bounded to 5 tries).
        mov     $5, %ebx
        call    read_all
4:      mov     buf, %eax               # save previous snapshot (8 bytes)
        mov     %eax, prev
        mov     buf+4, %eax
        mov     %eax, prev+4
        call    read_all
        mov     buf, %eax
        cmp     prev, %eax
        jne     5f
        mov     buf+4, %eax
        cmp     prev+4, %eax
        je      6f
5:      dec     %ebx
        jnz     4b

6:      PRINT   "rtc="
        # century: plausible register value, else 20
        movzbl  buf+6, %eax
        call    decode
        cmp     $19, %eax
        jb      7f
        cmp     $21, %eax
        jbe     8f
7:      mov     $20, %eax
8:      call    print_dec2
        movzbl  buf+5, %eax             # year
        call    decode
        call    print_dec2
        PRINT   "-"
        movzbl  buf+4, %eax             # month
        call    decode
        call    print_dec2
        PRINT   "-"
        movzbl  buf+3, %eax             # day
        call    decode
        call    print_dec2
        PRINT   " "
        movzbl  buf+2, %eax             # hour (bit 7 = PM in 12-hour mode)
        mov     %eax, %edx
        and     $0x7f, %eax
        call    decode
        testb   $0x02, status_b         # 24-hour mode?
        jnz     9f
        cmp     $12, %eax               # 12-hour: 12 AM -> 0, PM -> +12
        jne     10f
        xor     %eax, %eax
10:     test    $0x80, %edx
        jz      9f
        add     $12, %eax
9:      call    print_dec2
        PRINT   ":"
        movzbl  buf+1, %eax             # minutes
        call    decode
        call    print_dec2
        PRINT   ":"
        movzbl  buf+0, %eax             # seconds
        call    decode
        call    print_dec2
        PRINT   "\n"
        jmp     poweroff

        .section .rodata, "a"
regs:   # order of buf[]: sec, min, hour, day, month, year, century
        .byte   RTC_SEC, RTC_MIN, RTC_HOUR, RTC_DAY, RTC_MONTH, RTC_YEAR, RTC_CENTURY

        .section .bss, "aw", @nobits
        .balign 4
buf:    .skip   8
prev:   .skip   8
status_b: .skip 1
