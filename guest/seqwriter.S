/*
 * seqwriter: Lifeboat's write-ordering test guest (no OS, 16-bit real mode, SeaBIOS int 13h).
 *
 * It writes, forever, one 4 KiB record per write into a ring of 4 KiB-aligned blocks on its boot
 * disk, so that anyone holding a copy of the disk (a replica, a recovery point, a failed-over VM's
 * disk) can check from outside that it holds exactly the guest's writes 1..N: the verifier is
 * `lifeboat_qemu::seqwriter::verify`, which also owns the Rust copy of the layout below.
 *
 * Disk layout (LBA = 512-byte sector):
 *   LBA 0       stage 1 (this boot sector): loads LBA 1..7 to 0x7e00 with int 13h AH=42h.
 *   LBA 1..7    stage 2. It starts with the parameter block (byte 512 of the disk):
 *                 0  "LBSEQCFG"   magic
 *                 8  u32 1        layout version
 *                12  u32          ring start LBA (8)
 *                16  u32          ring blocks R (the host may patch it; >= 1, <= 65535)
 *                20  u16          writes per BIOS tick (18.2 Hz) before waiting for the next
 *                                 tick; 0 = as fast as the disk goes (the host may patch it)
 *                22  u16          print "seq N" when N is a multiple of this (>= 1, patchable)
 *   LBA 8..     the ring: R blocks of 4 KiB (8 sectors); record N goes to block (N - 1) mod R.
 *
 * Record (4096 bytes, little-endian):
 *    0  "LBSEQREC"  magic
 *    8  u64 N       sequence number, 1, 2, 3 ... across boots
 *   16  u32 B       boot number (1 on a fresh disk, +1 at every boot)
 *   20  u32         checksum: c = 0x4c424f41; for each u32 word w of the block (this field read
 *                   as 0): c = rol(c, 7) + w
 *   24  u32         ring block index ((N - 1) mod R)
 *   28  u32 0
 *   32  filler:     u32 word k (k = 8 .. 1023) = (low32(N) + k) * 0x9e3779b1
 *
 * At boot it reads the whole ring, takes the highest sequence number and boot number among the
 * valid records (magic and checksum right: a torn or garbled block is ignored), prints
 * "seqwriter boot B after seq M" (B = highest boot + 1) on COM1 and goes on with M + 1, so a
 * failed-over copy of the disk continues from its recovery point. Each record is written with
 * one int 13h AH=43h call (8 sectors); after it returns, "seq N" is printed if N is a multiple of
 * the print interval, so a "seq N" line on the serial port means writes 1..N were acknowledged.
 * With IDE, SeaBIOS hands the 8 sectors to the disk one at a time, header first: a write cut
 * by a crash (or by QMP quit) leaves a torn block, which the next boot ignores and the verifier
 * accepts as the in-flight write. An int 13h failure prints "seqwriter error ah=XX" and halts.
 * Defaults in this binary: R = 256, unthrottled, "seq N" every 16 writes.
 *
 * Build: as --32 + ld -m elf_i386 -Ttext 0x7c00 --oformat binary (4096 bytes), like
 * guest/build.sh; lifeboat_qemu::seqwriter::assemble does exactly that.
 */
        .code16
        .set COM1, 0x3f8
        .set CODE_SECTORS, 8            /* 4 KiB: stage 1 + stage 2 */
        .set RING_LBA, 8
        .set REC_SEG, 0x1000            /* record being written: phys 0x10000, 4 KiB */
        .set SCAN_SEG, 0x2000           /* ring scan buffer: phys 0x20000, 32 KiB */
        .set SCAN_BLOCKS, 8             /* blocks per int 13h read while scanning */
        .set BDA_TICKS, 0x46c           /* BIOS tick counter (0040:006C) */
        .set CSUM_SEED, 0x4c424f41
        .set FILL_MUL, 0x9e3779b1

        .text
        .globl _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7c00, %sp
        cld
        sti
        ljmp    $0, $stage1             /* normalise CS:IP to 0000:7cxx */

stage1:
        mov     %dl, boot_drive
        call    serial_init
        movw    $CODE_SECTORS-1, dap_count
        movw    $0x7e00, dap_off
        movw    $0, dap_seg
        movl    $1, dap_lba
        mov     $0x42, %ah
        call    disk_io
        jmp     main

/* int 13h extended call AH (42h read / 43h write) with the DAP; error: message and halt */
disk_io:
        mov     $0, %al
        mov     $dap, %si
        mov     boot_drive, %dl
        int     $0x13
        jc      disk_err
        ret
disk_err:
        push    %ax
        mov     $msg_err, %si
        call    puts
        pop     %ax
        mov     %ah, %al
        call    puthex8
        mov     $msg_crlf, %si
        call    puts
halt:
        cli
        hlt
        jmp     halt

/* COM1: 115200 8N1, FIFO on, interrupts off */
serial_init:
        mov     $COM1+1, %dx
        mov     $0x00, %al
        out     %al, %dx                /* IER = 0 */
        mov     $COM1+3, %dx
        mov     $0x80, %al
        out     %al, %dx                /* LCR: DLAB */
        mov     $COM1+0, %dx
        mov     $0x01, %al
        out     %al, %dx                /* divisor low = 1 */
        mov     $COM1+1, %dx
        mov     $0x00, %al
        out     %al, %dx                /* divisor high = 0 */
        mov     $COM1+3, %dx
        mov     $0x03, %al
        out     %al, %dx                /* LCR: 8N1 */
        mov     $COM1+2, %dx
        mov     $0xc7, %al
        out     %al, %dx                /* FCR: FIFO on, cleared */
        ret

/* putc AL on COM1 (waits for the transmit holding register to be empty) */
putc:
        push    %dx
        push    %ax
        mov     $COM1+5, %dx
1:      in      %dx, %al
        test    $0x20, %al
        jz      1b
        pop     %ax
        mov     $COM1, %dx
        out     %al, %dx
        pop     %dx
        ret

/* puts: NUL-terminated string at DS:SI */
puts:
        lodsb
        test    %al, %al
        jz      2f
        call    putc
        jmp     puts
2:      ret

/* puthex8: AL as 2 hex digits; puthex4: low nibble of AL */
puthex8:
        push    %ax
        shr     $4, %al
        call    puthex4
        pop     %ax
puthex4:
        and     $0x0f, %al
        add     $'0', %al
        cmp     $'9', %al
        jbe     3f
        add     $('a' - '0' - 10), %al
3:      jmp     putc

msg_err:   .asciz "seqwriter error ah="
msg_crlf:  .asciz "\r\n"
boot_drive: .byte 0
        .balign 4
dap:       .byte 0x10, 0                /* size, reserved */
dap_count: .word 0
dap_off:   .word 0
dap_seg:   .word 0
dap_lba:   .quad 0

        .org 510
        .word 0xaa55

/* ---- stage 2 (LBA 1..7, loaded at 0x7e00) ---- */

/* The parameter block: byte 512 of the disk (read by the verifier, patched by the host). */
params:
        .ascii  "LBSEQCFG"
        .long   1                       /* layout version */
p_ring_lba:      .long RING_LBA
p_ring_blocks:   .long 256
p_per_tick:      .word 0
p_print_every:   .word 16

main:
        /* scan the ring: highest valid seq -> seq, highest boot -> boot */
        xorl    %eax, %eax
        movl    %eax, seq_lo
        movl    %eax, seq_hi
        movl    %eax, boot
        movl    %eax, block
scan_chunk:
        movl    p_ring_blocks, %ecx
        subl    block, %ecx             /* blocks left */
        cmpl    $SCAN_BLOCKS, %ecx
        jbe     1f
        movl    $SCAN_BLOCKS, %ecx
1:      movw    %cx, scan_n
        shl     $3, %cx
        movw    %cx, dap_count
        movw    $0, dap_off
        movw    $SCAN_SEG, dap_seg
        call    block_lba
        mov     $0x42, %ah
        call    disk_io

        mov     $SCAN_SEG, %ax
        mov     %ax, %es
        xor     %di, %di
        mov     scan_n, %cx
scan_block:
        push    %cx
        call    check_block             /* CF clear: valid record at ES:DI */
        jc      2f
        movl    %es:8(%di), %eax        /* seq lo */
        movl    %es:12(%di), %edx       /* seq hi */
        cmpl    seq_hi, %edx
        jb      3f
        ja      4f
        cmpl    seq_lo, %eax
        jbe     3f
4:      movl    %eax, seq_lo
        movl    %edx, seq_hi
3:      movl    %es:16(%di), %eax
        cmpl    boot, %eax
        jbe     2f
        movl    %eax, boot
2:      add     $4096, %di
        incl    block
        pop     %cx
        loop    scan_block
        xor     %ax, %ax
        mov     %ax, %es
        movl    block, %eax
        cmpl    p_ring_blocks, %eax
        jb      scan_chunk

        incl    boot
        mov     $msg_boot, %si
        call    puts
        movl    boot, %eax
        xorl    %edx, %edx
        call    putdec64
        mov     $msg_after, %si
        call    puts
        movl    seq_lo, %eax
        movl    seq_hi, %edx
        call    putdec64
        mov     $msg_crlf, %si
        call    puts
        movw    BDA_TICKS, %ax
        movw    %ax, last_tick

write_loop:
        addl    $1, seq_lo
        adcl    $0, seq_hi
        /* block = (seq - 1) mod R */
        movl    seq_lo, %eax
        movl    seq_hi, %edx
        subl    $1, %eax
        sbbl    $0, %edx
        movl    p_ring_blocks, %ecx
        call    mod64
        movl    %edx, block

        /* build the record at REC_SEG:0 */
        mov     $REC_SEG, %ax
        mov     %ax, %es
        xor     %di, %di
        movl    rec_magic, %eax
        movl    %eax, %es:0
        movl    rec_magic+4, %eax
        movl    %eax, %es:4
        movl    seq_lo, %eax
        movl    %eax, %es:8
        movl    seq_hi, %eax
        movl    %eax, %es:12
        movl    boot, %eax
        movl    %eax, %es:16
        movl    $0, %es:20
        movl    block, %eax
        movl    %eax, %es:24
        movl    $0, %es:28
        /* checksum of the header (word 5 is 0), then filler words 8..1023 with the checksum */
        xor     %di, %di
        movl    $CSUM_SEED, %edx
        .irp    off, 0, 4, 8, 12, 16, 20, 24, 28
        roll    $7, %edx
        addl    %es:\off(%di), %edx
        .endr
        movl    seq_lo, %eax
        addl    $8, %eax
        imull   $FILL_MUL, %eax, %eax   /* word 8 = (low32(N) + 8) * FILL_MUL */
        movl    $FILL_MUL, %ebp
        mov     $32, %di
        mov     $127, %cx               /* 127 * 8 = 1016 words */
5:
        .rept   8
        stosl                           /* ES:DI = EAX, DI += 4 */
        roll    $7, %edx
        addl    %eax, %edx
        addl    %ebp, %eax              /* word k + 1 = word k + FILL_MUL */
        .endr
        loop    5b
        movl    %edx, %es:20
        xor     %ax, %ax
        mov     %ax, %es

        /* write it: 8 sectors at RING_LBA + block * 8 */
        movw    $8, dap_count
        movw    $0, dap_off
        movw    $REC_SEG, dap_seg
        call    block_lba
        mov     $0x43, %ah
        call    disk_io

        /* "seq N" when N is a multiple of the print interval */
        movl    seq_lo, %eax
        movl    seq_hi, %edx
        movzwl  p_print_every, %ecx
        call    mod64
        testl   %edx, %edx
        jnz     6f
        mov     $msg_seq, %si
        call    puts
        movl    seq_lo, %eax
        movl    seq_hi, %edx
        call    putdec64
        mov     $msg_crlf, %si
        call    puts
6:
        /* throttle: after p_per_tick writes, wait for the next BIOS tick */
        movw    p_per_tick, %ax
        testw   %ax, %ax
        jz      write_loop
        incw    tick_writes
        cmpw    %ax, tick_writes
        jb      write_loop
        movw    $0, tick_writes
7:      sti
        hlt
        movw    BDA_TICKS, %ax
        cmpw    last_tick, %ax
        je      7b
        movw    %ax, last_tick
        jmp     write_loop

/* dap_lba = RING_LBA + block * 8 (high dword 0) */
block_lba:
        movl    block, %eax
        shll    $3, %eax
        addl    p_ring_lba, %eax
        movl    %eax, dap_lba
        movl    $0, dap_lba+4
        ret

/* EDX = EDX:EAX mod ECX (ECX != 0); clobbers EAX, EBX */
mod64:
        movl    %eax, %ebx
        movl    %edx, %eax
        xorl    %edx, %edx
        divl    %ecx                    /* EDX = hi mod R */
        movl    %ebx, %eax
        divl    %ecx                    /* (hi mod R):lo / R: no overflow */
        ret

/* EAX = checksum of the 4 KiB block at ES:DI (word 5 must be 0); keeps DI */
checksum:
        push    %di
        push    %cx
        movl    $CSUM_SEED, %eax
        mov     $128, %cx
1:
        .irp    off, 0, 4, 8, 12, 16, 20, 24, 28
        roll    $7, %eax
        addl    %es:\off(%di), %eax
        .endr
        add     $32, %di
        loop    1b
        pop     %cx
        pop     %di
        ret

/* CF clear if ES:DI holds a record with the right magic and checksum (its checksum field
   is zeroed on the way); keeps DI */
check_block:
        movl    %es:0(%di), %eax
        cmpl    rec_magic, %eax
        jne     1f
        movl    %es:4(%di), %eax
        cmpl    rec_magic+4, %eax
        jne     1f
        movl    %es:20(%di), %esi
        movl    $0, %es:20(%di)
        call    checksum
        cmpl    %esi, %eax
        jne     1f
        clc
        ret
1:      stc
        ret

/* print EDX:EAX in decimal */
putdec64:
        pushal
        xor     %cx, %cx
        movl    $10, %ebp
1:      movl    %eax, %esi
        movl    %edx, %eax
        xorl    %edx, %edx
        divl    %ebp                    /* EAX = hi / 10, EDX = hi mod 10 */
        movl    %eax, %edi
        movl    %esi, %eax
        divl    %ebp                    /* EAX = low quotient, EDX = digit */
        push    %dx
        inc     %cx
        movl    %edi, %edx
        movl    %eax, %esi
        orl     %edx, %esi
        jnz     1b
2:      pop     %ax
        add     $'0', %al
        call    putc
        loop    2b
        popal
        ret

msg_boot:  .asciz "seqwriter boot "
msg_after: .asciz " after seq "
msg_seq:   .asciz "seq "
        .balign 4
rec_magic: .ascii "LBSEQREC"
seq_lo:    .long 0
seq_hi:    .long 0
boot:      .long 0
block:     .long 0
scan_n:    .word 0
last_tick: .word 0
tick_writes: .word 0

        .org 4096
