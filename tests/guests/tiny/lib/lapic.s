# lapic.s - local APIC (xAPIC MMIO at 0xFEE00000) helpers.

        .include "tiny.inc"
        .text

# lapic_id: %eax = this CPU's local APIC id (ID register bits 31:24).
        .globl lapic_id
lapic_id:
        mov     LAPIC_BASE + LAPIC_ID, %eax
        shr     $24, %eax
        ret

# lapic_enable: software-enable the local APIC (SVR bit 8, spurious vector
# 0xFF) and mask LINT0 so that nothing from the legacy PIC (ExtINT) reaches
# us while we run with interrupts on.
        .globl lapic_enable
lapic_enable:
        movl    $0x1ff, LAPIC_BASE + LAPIC_SVR
        orl     $LVT_MASKED, LAPIC_BASE + LAPIC_LVT_LINT0
        ret

# lapic_send_ipi: %edx = destination APIC id, %eax = ICR low word
# (delivery mode | vector | flags).  Waits (bounded) until the APIC has
# accepted the IPI.
        .globl lapic_send_ipi
lapic_send_ipi:
        push    %ecx
        push    %edx
        shl     $24, %edx
        mov     %edx, LAPIC_BASE + LAPIC_ICR_HI
        mov     %eax, LAPIC_BASE + LAPIC_ICR_LO  # writing the low word sends
        mov     $10000, %ecx
1:      testl   $ICR_BUSY, LAPIC_BASE + LAPIC_ICR_LO
        jz      2f
        pause
        loop    1b
2:      pop     %edx
        pop     %ecx
        ret
