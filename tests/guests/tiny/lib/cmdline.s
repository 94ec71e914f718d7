# cmdline.s - access to the kernel command line passed in hvm_start_info.
#
# hvm_start_info (PVH ABI): u32 magic (0x336ec578) at +0, ..., u64
# cmdline_paddr at +24 pointing at a NUL-terminated string.  Paging is off,
# so the physical address is directly usable if it is below 4 GiB.

        .include "tiny.inc"
        .text

# start_info_ok: %eax = 1 if %ebx at entry pointed at a valid
# hvm_start_info (right magic), else 0.
        .globl start_info_ok
start_info_ok:
        mov     start_info, %eax
        test    %eax, %eax
        jz      1f
        cmpl    $PVH_START_MAGIC, (%eax)
        jne     1f
        mov     $1, %eax
        ret
1:      xor     %eax, %eax
        ret

# cmdline_get: %eax = pointer to the NUL-terminated command line; points at
# an empty string if there is no valid start info / no command line.
        .globl cmdline_get
cmdline_get:
        call    start_info_ok
        test    %eax, %eax
        jz      1f
        mov     start_info, %eax
        cmpl    $0, PVH_CMDLINE_OFF+4(%eax)     # above 4 GiB: unusable
        jne     1f
        mov     PVH_CMDLINE_OFF(%eax), %eax
        test    %eax, %eax
        jz      1f
        ret
1:      mov     $empty_string, %eax
        ret

# cmdline_find: %esi = NUL-terminated key, e.g. "cpus=".  Looks for a token
# of the command line that starts with the key (tokens are separated by
# spaces).  %eax = address of the text following the key, or 0.
        .globl cmdline_find
cmdline_find:
        push    %ebx
        push    %ecx
        push    %edx
        push    %edi
        call    cmdline_get
        mov     %eax, %edi              # %edi = candidate token start
        mov     $4096, %ebx             # bound the scan
.Lfind_token:
        # compare key with text at %edi
        xor     %ecx, %ecx
.Lfind_cmp:
        mov     (%esi,%ecx), %dl
        test    %dl, %dl
        jz      .Lfind_hit              # whole key matched
        cmp     (%edi,%ecx), %dl
        jne     .Lfind_next
        inc     %ecx
        jmp     .Lfind_cmp
.Lfind_next:
        # advance %edi past the current token and the following spaces
1:      mov     (%edi), %dl
        test    %dl, %dl
        jz      .Lfind_miss
        dec     %ebx
        jz      .Lfind_miss
        inc     %edi
        cmp     $' ', %dl
        jne     1b
2:      cmpb    $' ', (%edi)
        jne     .Lfind_token
        inc     %edi
        jmp     2b
.Lfind_hit:
        lea     (%edi,%ecx), %eax
        jmp     .Lfind_out
.Lfind_miss:
        xor     %eax, %eax
.Lfind_out:
        pop     %edi
        pop     %edx
        pop     %ecx
        pop     %ebx
        ret

# cmdline_uint: %esi = key (e.g. "cpus="), %eax = default value.
# %eax = decimal value following the key, or the default if the key is
# absent or not followed by a digit.
        .globl cmdline_uint
cmdline_uint:
        push    %ebx
        push    %ecx
        push    %edx
        mov     %eax, %ebx              # default
        call    cmdline_find
        test    %eax, %eax
        jz      3f
        mov     %eax, %edx
        movzbl  (%edx), %ecx
        sub     $'0', %ecx
        cmp     $9, %ecx
        ja      3f                      # no digit: default
        xor     %eax, %eax
1:      movzbl  (%edx), %ecx
        sub     $'0', %ecx
        cmp     $9, %ecx
        ja      2f
        imul    $10, %eax
        add     %ecx, %eax
        inc     %edx
        jmp     1b
2:      mov     %eax, %ebx
3:      mov     %ebx, %eax
        pop     %edx
        pop     %ecx
        pop     %ebx
        ret

        .section .rodata, "a"
empty_string:
        .byte   0
