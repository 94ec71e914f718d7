# triplefault - deliberately triple-faults the CPU.
#
# Loads an IDT with limit 0, so no vector can be delivered, and executes
# ud2: #UD cannot be delivered -> #GP, which cannot be delivered either ->
# #DF -> triple fault (shutdown).  The VMM sees KVM_EXIT_SHUTDOWN and
# handles it like a reset / crash, according to its policy.
#
# Why ud2 and not int3: kvm-pvm (the KVM of our development hosts) cannot
# emulate `int3` and reports an internal error (KVM_EXIT_INTERNAL_ERROR)
# instead of faulting; a #UD goes through its normal exception path.
#
# Serial output:
#   HANGAR-TINY triplefault start
#   faulting
# ("still alive" would mean the fault did not happen.)

        .include "tiny.inc"
        GUEST_NAME triplefault
        .text

        .globl main
main:
        PRINT   "faulting\n"
        call    serial_drain            # let the line out before we die
        lidt    null_idt
        ud2                             # -> #UD -> #GP -> #DF -> shutdown
        PRINT   "still alive\n"
        jmp     halt_forever

        .section .rodata, "a"
        .balign 4
        .word   0
null_idt:
        .word   0                       # limit 0: no usable vector
        .long   0
