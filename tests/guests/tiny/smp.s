# smp - multi-processor bring-up.
#
# The BSP (vCPU 0) starts vCPUs 1..N-1 with INIT-SIPI-SIPI through its
# local APIC.  N comes from the kernel command line token `cpus=N`
# (default 2, clamped to 1..MAX_CPUS).  Each AP wakes up in real mode at
# the trampoline copied to 0x8000 (SIPI vector 0x08), switches to 32-bit
# protected mode with our GDT and reports itself.  COM1 output is
# serialised by a spinlock (lock xchg) so lines never interleave.
#
# The BSP then waits with `hlt` (cheap on a host that emulates guest
# instructions): each AP sends it a wake-up IPI after reporting, and a
# periodic LAPIC timer (10 ms) bounds the wait to about 10 s.
#
# The two interrupt handlers never return with `iret`: kvm-pvm (the KVM on
# our development hosts) cannot emulate a 32-bit iret and fails the vCPU
# with an internal error.  The BSP only takes interrupts inside the
# `sti; hlt` of its wait loop, so a handler simply drops the interrupt frame
# (restores the saved %esp) and jumps back to the top of the loop.
#
# Serial output (AP lines in arrival order):
#   HANGAR-TINY smp start
#   cpu 0 online
#   cpu 1 online
#   ...
#   all <N> cpus online
# or, if some AP did not come up within ~10 s:
#   timeout: only <k> of <N> cpus online
# then powers off via S5 (in both cases).

        .include "tiny.inc"
        GUEST_NAME smp

        .equ MAX_CPUS,        64
        .equ AP_STACK_SIZE,   1024
        .equ TRAMPOLINE_ADDR, 0x8000            # below 1 MiB, 4 KiB aligned
        .equ SIPI_VECTOR,     TRAMPOLINE_ADDR >> 12
        .equ ICR_INIT,        0x4500            # INIT, level assert
        .equ ICR_SIPI,        0x4600 | SIPI_VECTOR
        .equ VEC_WAKE,        0x40              # AP -> BSP "I'm up" IPI
        .equ VEC_TIMER,       0x41              # LAPIC timer
        .equ TIMER_DIV16,     0x3               # divide configuration: /16
        .equ TIMER_10MS,      625000            # * 16 ns (1 GHz APIC bus, KVM)
        .equ TIMEOUT_TICKS,   1000              # 10 s

        .text

        .globl main
main:
        # N = cpus=N from the command line, clamped to 1..MAX_CPUS
        mov     $cpus_key, %esi
        mov     $2, %eax
        call    cmdline_uint
        test    %eax, %eax
        jnz     1f
        inc     %eax
1:      cmp     $MAX_CPUS, %eax
        jbe     2f
        PRINT   "warning: cpus= clamped to 64\n"
        mov     $MAX_CPUS, %eax
2:      mov     %eax, ncpus

        # Explicit initialisation: do not rely on .bss being zeroed (e.g.
        # after a reset without reloading the image).
        movl    $0, print_lock
        movl    $0, online
        movl    $0, ticks

        call    idt_init                # default handlers for everything
        mov     $VEC_TIMER, %eax
        mov     $timer_irq, %edx
        call    idt_set_gate
        mov     $VEC_WAKE, %eax
        mov     $wake_irq, %edx
        call    idt_set_gate
        call    lapic_enable
        call    lapic_id
        mov     %eax, bsp_id

        call    report_online           # "cpu 0 online"

        # Trampoline to 0x8000, where the SIPI makes the APs start.
        mov     $trampoline_start, %esi
        mov     $TRAMPOLINE_ADDR, %edi
        mov     $(trampoline_end - trampoline_start), %ecx
        rep movsb

        # Periodic 10 ms LAPIC timer: the time base for the bounded wait.
        movl    $TIMER_DIV16, LAPIC_BASE + LAPIC_TIMER_DIV
        movl    $(LVT_PERIODIC | VEC_TIMER), LAPIC_BASE + LAPIC_LVT_TIMER
        movl    $TIMER_10MS, LAPIC_BASE + LAPIC_TIMER_INIT

        # INIT-SIPI-SIPI each AP (APIC ids 1..N-1).  The short pause delays
        # stand in for the 10 ms / 200 us of the MP spec: virtual APICs do
        # not need them, and on real time scales they would cost an
        # emulating host millions of instructions.  A second SIPI to a CPU
        # that is already running is ignored.
        mov     $1, %edx
3:      cmp     ncpus, %edx
        jae     4f
        mov     $ICR_INIT, %eax
        call    lapic_send_ipi
        PAUSE_N 1000
        mov     $ICR_SIPI, %eax
        call    lapic_send_ipi
        PAUSE_N 200
        call    lapic_send_ipi
        inc     %edx
        jmp     3b

        # Wait, halted, until everybody reported or the timeout expired.
4:      mov     %esp, wait_esp          # the interrupt handlers resume here
wait_loop:
        cli
        mov     online, %eax
        cmp     ncpus, %eax
        jae     all_online
        cmpl    $TIMEOUT_TICKS, ticks
        jae     timed_out
        sti                             # sti;hlt: no wake-up can be lost
        hlt
        jmp     wait_loop

all_online:
        call    stop_timer
        call    lock_acquire
        PRINT   "all "
        mov     ncpus, %eax
        call    print_dec
        PRINT   " cpus online\n"
        jmp     poweroff                # APs are halted with IF=0

timed_out:
        call    stop_timer
        call    lock_acquire
        PRINT   "timeout: only "
        mov     online, %eax
        call    print_dec
        PRINT   " of "
        mov     ncpus, %eax
        call    print_dec
        PRINT   " cpus online\n"
        jmp     poweroff

stop_timer:
        movl    $LVT_MASKED, LAPIC_BASE + LAPIC_LVT_TIMER
        movl    $0, LAPIC_BASE + LAPIC_TIMER_INIT
        ret

# Interrupt handlers (BSP only, taken only in the sti;hlt above): no iret,
# see the top of the file.  Interrupt gates leave IF clear.
timer_irq:
        incl    ticks
wake_irq:
        call    lapic_eoi
        mov     wait_esp, %esp          # drop the interrupt frame
        jmp     wait_loop

# report_online: print "cpu <apic id> online" under the lock, then count us.
report_online:
        push    %eax
        call    lock_acquire
        PRINT   "cpu "
        call    lapic_id
        call    print_dec
        PRINT   " online\n"
        call    lock_release
        lock incl online
        pop     %eax
        ret

# Test-and-test-and-set spinlock around whole lines of COM1 output.
lock_acquire:
        push    %eax
1:      mov     $1, %eax
        lock xchg %eax, print_lock      # (xchg with memory locks anyway)
        test    %eax, %eax
        jz      3f
2:      pause                           # spin on a plain read until free
        cmpl    $0, print_lock
        jne     2b
        jmp     1b
3:      pop     %eax
        ret

lock_release:
        movl    $0, print_lock          # a plain store releases on x86
        ret

# ---- AP start-up --------------------------------------------------------
# Real-mode trampoline, copied to TRAMPOLINE_ADDR.  The SIPI starts the AP
# at CS:IP = (SIPI_VECTOR << 8):0000, i.e. at the copy's first byte, so
# everything here is addressed relative to trampoline_start.
        .balign 16
trampoline_start:
        .code16
        cli
        cld
        mov     %cs, %ax
        mov     %ax, %ds
        lgdtl   tramp_gdtr - trampoline_start   # DS-relative, 32-bit base
        mov     %cr0, %eax
        or      $1, %eax                # CR0.PE: protected mode, no paging
        mov     %eax, %cr0
        ljmpl   $SEL_CODE32, $ap_entry32        # absolute, above 1 MiB
        .balign 4
        .word   0
tramp_gdtr:
        .word   3 * 8 - 1               # same GDT as the BSP (entry.s)
        .long   gdt
trampoline_end:
        .code32

ap_entry32:
        mov     $SEL_DATA32, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     %eax, %fs
        mov     %eax, %gs
        # Stack: ap_stacks + (id + 1) * AP_STACK_SIZE (no call before it).
        mov     LAPIC_BASE + LAPIC_ID, %eax
        shr     $24, %eax
        cmp     $MAX_CPUS, %eax
        jae     1f                      # no stack for it: stay silent
        inc     %eax
        imul    $AP_STACK_SIZE, %eax
        lea     ap_stacks(%eax), %esp
        cld

        call    lapic_enable            # software-enable to send the IPI
        call    report_online
        mov     bsp_id, %edx            # wake the BSP so it re-checks
        mov     $(0x4000 | VEC_WAKE), %eax      # fixed delivery
        call    lapic_send_ipi
1:      jmp     halt_forever

        .section .rodata, "a"
cpus_key:
        .asciz  "cpus="

        .section .bss, "aw", @nobits
        .balign 4
ncpus:      .skip 4
online:     .skip 4                     # CPUs that have reported
ticks:      .skip 4                     # 10 ms timer ticks on the BSP
bsp_id:     .skip 4
wait_esp:   .skip 4                     # BSP %esp in the wait loop
print_lock: .skip 4
        .balign 16
ap_stacks:
        .skip   MAX_CPUS * AP_STACK_SIZE
