# idt.s - a minimal 32-bit IDT for guests that want interrupts (smp).
#
# idt_init fills all 256 vectors: exceptions 0..31 print
# "exception <vector>" and halt (so a bug is visible on COM1 instead of
# becoming a silent triple fault); 32..255 go to a handler that just sends a
# LAPIC EOI and returns.  Guests install their own handlers with idt_set_gate.
#
# Caveat: kvm-pvm (the KVM of our development hosts) cannot emulate a 32-bit
# `iret` and stops the vCPU with an internal error, so guests meant to run
# there must not rely on returning from an interrupt (see smp.s for a
# handler that resumes a halt loop instead).  The default handler below does
# use iret; it is only meant for interrupts that should never arrive.

        .include "tiny.inc"

        .equ GATE_INT32, 0x8e00         # present, DPL0, 32-bit interrupt gate

        .text

# idt_init: build the table and load it (lidt).  Interrupts stay disabled.
        .globl idt_init
idt_init:
        push    %eax
        push    %ecx
        push    %edx
        xor     %eax, %eax
1:      cmp     $32, %eax
        jae     2f
        lea     exc_stubs(,%eax,8), %edx        # exception stub (8 bytes each)
        jmp     3f
2:      mov     $default_irq, %edx
3:      call    idt_set_gate
        inc     %eax
        cmp     $256, %eax
        jb      1b
        lidt    idt_desc
        pop     %edx
        pop     %ecx
        pop     %eax
        ret

# idt_set_gate: %eax = vector, %edx = handler address.
        .globl idt_set_gate
idt_set_gate:
        push    %ecx
        push    %edx
        lea     idt(,%eax,8), %ecx
        mov     %dx, (%ecx)                     # offset 15:0
        movw    $SEL_CODE32, 2(%ecx)            # our GDT's code selector
        movw    $GATE_INT32, 4(%ecx)
        shr     $16, %edx
        mov     %dx, 6(%ecx)                    # offset 31:16
        pop     %edx
        pop     %ecx
        ret

# lapic_eoi: signal end-of-interrupt to the local APIC.
        .globl lapic_eoi
lapic_eoi:
        movl    $0, LAPIC_BASE + LAPIC_EOI
        ret

default_irq:
        call    lapic_eoi
        iret

# Exception stubs, one per vector, each padded to 8 bytes so that idt_init
# can compute its address: push $vector (2 bytes), jmp exc_common (5 bytes).
# Error codes pushed by some exceptions are ignored: the stub never returns.
        .balign 8
exc_stubs:
        .irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .balign 8
        .byte   0x6a, \vec              # push $vec (imm8)
        .byte   0xe9                    # jmp rel32 exc_common
        .long   exc_common - (. + 4)
        .endr

exc_common:
        cli
        PRINT   "exception "
        mov     (%esp), %eax
        call    print_dec
        PRINT   "\n"
        jmp     halt_forever

        .section .rodata, "a"
        .balign 4
        .word   0
idt_desc:
        .word   256 * 8 - 1
        .long   idt

        .section .bss, "aw", @nobits
        .balign 8
idt:
        .skip   256 * 8
