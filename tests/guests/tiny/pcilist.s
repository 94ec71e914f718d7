# pcilist - lists the devices on PCI bus 0 as the guest sees them.
#
# Scans function 0 of slots 0..31 through the legacy configuration ports
# (0xCF8 address, 0xCFC data).  For each device present it prints its slot
# and its vendor and device ids; a virtio-input device (1af4:1052) is asked
# for its name through its device configuration (virtio 1.2, 5.8.4): the
# guest turns on memory decoding, follows the capability list to the
# VIRTIO_PCI_CAP_DEVICE_CFG capability, and in that window selects
# VIRTIO_INPUT_CFG_ID_NAME and reads the answer.
#
# Serial output:
#   HANGAR-TINY pcilist start
#   pci <slot, 2 digits> id=0x<device id><vendor id>[ name=<virtio-input name>]
#   ...
#   pci done
# then waits for `q` on COM1 (so that a client connecting late still finds
# the listing in the console's backlog), prints `bye` and powers off.

        .include "tiny.inc"
        GUEST_NAME pcilist

        .equ PCI_ADDRESS,     0xcf8
        .equ PCI_DATA,        0xcfc
        .equ VIRTIO_INPUT_ID, 0x10521af4    # device 0x1052 (0x1040 + 18), vendor 0x1af4
        .equ CAP_VENDOR,      0x09
        .equ CAP_DEVICE_CFG,  4
        .equ CFG_ID_NAME,     1
        .equ CFG_SIZE_OFF,    2
        .equ CFG_PAYLOAD_OFF, 8

        .text

# config_read: %ebx = slot << 11, %al = register -> %eax = that dword.
config_read:
        push    %edx
        movzbl  %al, %eax
        and     $0xfc, %eax
        or      %ebx, %eax
        or      $0x80000000, %eax
        mov     $PCI_ADDRESS, %dx
        out     %eax, %dx
        mov     $PCI_DATA, %dx
        in      %dx, %eax
        pop     %edx
        ret

# config_write: %ebx = slot << 11, %al = register, %ecx = dword to write.
config_write:
        push    %eax
        push    %edx
        movzbl  %al, %eax
        and     $0xfc, %eax
        or      %ebx, %eax
        or      $0x80000000, %eax
        mov     $PCI_ADDRESS, %dx
        out     %eax, %dx
        mov     $PCI_DATA, %dx
        mov     %ecx, %eax
        out     %eax, %dx
        pop     %edx
        pop     %eax
        ret

# print_input_name: %ebx = slot << 11 of a virtio-input device.  Prints
# " name=<its name>", or " name?" when its configuration cannot be found.
print_input_name:
        push    %eax
        push    %ecx
        push    %edx
        push    %esi
        push    %edi
        # Memory decoding on, so BAR 0 answers (the status half is written as 0).
        mov     $0x04, %al
        call    config_read
        and     $0xffff, %eax
        or      $0x0002, %eax
        mov     %eax, %ecx
        mov     $0x04, %al
        call    config_write
        # BAR 0, a 64-bit memory BAR below 4 GiB: the low dword is the address.
        mov     $0x10, %al
        call    config_read
        and     $0xfffffff0, %eax
        mov     %eax, %edi
        # The capability list: status bit 4 says there is one, 0x34 points at it.
        mov     $0x04, %al
        call    config_read
        test    $0x00100000, %eax
        jz      8f
        mov     $0x34, %al
        call    config_read
        movzbl  %al, %esi
        mov     $48, %edx               # a looping list must not hang the guest
1:      test    %esi, %esi
        jz      8f
        mov     %esi, %eax
        call    config_read             # id, next, length, cfg_type
        mov     %eax, %ecx
        cmp     $CAP_VENDOR, %cl
        jne     2f
        shr     $24, %ecx
        cmp     $CAP_DEVICE_CFG, %ecx
        jne     2f
        mov     %esi, %eax
        add     $8, %eax
        call    config_read             # offset of the window in the BAR
        add     %eax, %edi
        jmp     3f
2:      mov     %esi, %eax
        call    config_read
        movzbl  %ah, %esi               # next
        dec     %edx
        jnz     1b
        jmp     8f
        # Ask the device for its name: select, subsel, then read size and payload.
3:      movb    $CFG_ID_NAME, (%edi)
        movb    $0, 1(%edi)
        movzbl  CFG_SIZE_OFF(%edi), %ecx
        cmp     $128, %ecx
        jbe     4f
        mov     $128, %ecx
4:      PRINT   " name="
        lea     CFG_PAYLOAD_OFF(%edi), %esi
        jecxz   9f
5:      movb    (%esi), %al
        call    serial_putc
        inc     %esi
        loop    5b
        jmp     9f
8:      PRINT   " name?"
9:      pop     %edi
        pop     %esi
        pop     %edx
        pop     %ecx
        pop     %eax
        ret

        .globl main
main:
        xor     %ebp, %ebp              # slot
1:      mov     %ebp, %ebx
        shl     $11, %ebx
        mov     $0x00, %al
        call    config_read
        cmp     $0xffffffff, %eax
        je      2f
        mov     %eax, %esi
        PRINT   "pci "
        mov     %ebp, %eax
        call    print_dec2
        PRINT   " id=0x"
        mov     %esi, %eax
        call    print_hex32
        cmp     $VIRTIO_INPUT_ID, %esi
        jne     3f
        call    print_input_name
3:      PRINT   "\n"
2:      inc     %ebp
        cmp     $32, %ebp
        jb      1b
        PRINT   "pci done\n"
4:      call    serial_getc
        cmp     $'q', %al
        jne     4b
        PRINT   "bye\n"
        ret
