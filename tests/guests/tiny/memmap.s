# memmap - prints the memory map the VMM hands over in hvm_start_info, so tests can check the
# e820 layout (RAM below the 32-bit MMIO gap, the rest above 4 GiB) and the RSDP address.
#
# Serial output:
#   HANGAR-TINY memmap start
#   rsdp=0x<hi>_<lo>
#   mem 0x<addr hi>_<addr lo> 0x<size hi>_<size lo> type=<n>     (one line per entry)
#   memmap done
# then powers off.

        .include "tiny.inc"
        GUEST_NAME memmap
        .text

# print_u64 %esi: prints the u64 at (%esi) as 0x<hi>_<lo>.
print_u64:
        PRINT   "0x"
        mov     4(%esi), %eax
        call    print_hex32
        PRINT   "_"
        mov     (%esi), %eax
        call    print_hex32
        ret

        .globl main
main:
        mov     start_info, %ebx
        PRINT   "rsdp="
        lea     32(%ebx), %esi
        call    print_u64
        PRINT   "\n"

        mov     48(%ebx), %ecx          # memmap_entries
        mov     40(%ebx), %edi          # memmap_paddr (below 4 GiB)
1:      test    %ecx, %ecx
        jz      2f
        PRINT   "mem "
        mov     %edi, %esi
        call    print_u64
        PRINT   " "
        lea     8(%edi), %esi
        call    print_u64
        PRINT   " type="
        mov     16(%edi), %eax
        call    print_dec
        PRINT   "\n"
        add     $24, %edi
        dec     %ecx
        jmp     1b

2:      PRINT   "memmap done\n"
        jmp     poweroff
