# entry.s - PVH entry point shared by every tiny guest.
#
# The VMM finds `_start` through the PVH ELF note below and jumps to it in
# 32-bit protected mode with paging off, flat segments and
# %ebx = guest-physical address of struct hvm_start_info.  There is no stack
# and no IDT, and the GDT the VMM used lives in memory we are told to leave
# alone, so the first thing we do is set up our own stack and GDT.

        .include "tiny.inc"

# ---- PVH entry note ---------------------------------------------------------
# Elf32_Nhdr { namesz = 4, descsz = 4, type = 18 } "Xen\0" <entry paddr>.
# tiny.ld puts .note.Xen into a PT_NOTE program header.
        .section .note.Xen, "a", @note
        .balign 4
        .long   4                               # namesz ("Xen\0")
        .long   4                               # descsz (32-bit address)
        .long   XEN_ELFNOTE_PHYS32_ENTRY        # type
        .asciz  "Xen"
        .balign 4
        .long   _start                          # desc: physical entry point
        .balign 4

# ---- entry ------------------------------------------------------------------
        .section .text.entry, "ax"
        .globl  _start
_start:
        cli                             # we have no IDT (yet)
        cld
        mov     $bsp_stack_top, %esp    # PVH gives us no stack
        mov     %ebx, start_info        # keep hvm_start_info for cmdline.s

        # Load our own flat GDT (the VMM's one is in reserved low memory and
        # its selector numbers are not part of the ABI); SMP APs use it too.
        lgdt    gdt_desc
        ljmp    $SEL_CODE32, $1f
1:      mov     $SEL_DATA32, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     %eax, %fs
        mov     %eax, %gs
        xor     %ebp, %ebp

        call    serial_init
        PRINT   "HANGAR-TINY "
        mov     $guest_name, %esi       # defined by GUEST_NAME in the guest
        call    serial_puts
        PRINT   " start\n"

        call    main
        jmp     poweroff                # main returned: we are done

# ---- GDT: null, flat 4 GiB code (0x08), flat 4 GiB data (0x10) -------------
        .section .rodata, "a"
        .balign 8
        .globl  gdt, gdt_desc
gdt:
        .quad   0
        # Accessed bits preset, so loading a selector never makes the CPU
        # write to the table.
        .quad   0x00cf9b000000ffff      # 0x08: base 0, limit 4G, 32-bit code
        .quad   0x00cf93000000ffff      # 0x10: base 0, limit 4G, data
gdt_end:
        .balign 4
        .word   0                       # pad so the base below is aligned
gdt_desc:
        .word   gdt_end - gdt - 1
        .long   gdt

# ---- data -------------------------------------------------------------------
        .data
        .balign 4
        .globl  start_info
start_info:
        .long   0                       # %ebx at entry

        .section .bss, "aw", @nobits
        .balign 16
bsp_stack:
        .skip   16384
bsp_stack_top:
