/*
 * Lifeboat's test guest: a 512-byte boot sector (no OS, no filesystem).
 *
 * Loaded by SeaBIOS from sector 0 of the boot disk at 0x7c00 (16-bit real mode, DL = drive):
 *   1. prints "LIFEBOAT-GUEST boot" on COM1 (0x3f8);
 *   2. reads sector 1 (int 13h AH=42h, LBA) and increments the little-endian u32 counter at
 *      its offset 0 (the rest of sector 1 is left as it was);
 *   3. writes sectors 2 .. 2+NSECT-1 (int 13h AH=43h), sector k filled with the byte
 *      (counter + k) & 0xff;
 *   4. writes sector 1 back with the new counter;
 *   5. prints "LIFEBOAT-GUEST done counter=XXXXXXXX" (hex) and writes 0 to port 0xf4
 *      (QEMU `-device isa-debug-exit,iobase=0xf4,iosize=0x04`: QEMU exits with status 1).
 * If an int 13h call fails: prints "LIFEBOAT-GUEST error ah=XX", writes 1 to port 0xf4
 * (QEMU exit status 3), then halts.
 *
 * Build: guest/build.sh [OUTDIR]  (GNU as + ld, no nasm).
 */
        .code16
        .set NSECT, 64                  /* pattern sectors: 2 .. 65 (32 KiB) */
        .set COM1, 0x3f8
        .set EXIT_PORT, 0xf4
        .set CNT_BUF, 0x8000            /* sector 1, at 0000:8000 */
        .set PAT_SEG, 0x1000            /* pattern, at 1000:0000 (phys 0x10000, no 64K crossing) */

        .text
        .globl _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7c00, %sp
        sti
        ljmp    $0, $main               /* normalise CS:IP to 0000:7cxx */

main:
        mov     %dl, boot_drive
        call    serial_init
        mov     $msg_boot, %si
        call    puts

        /* read sector 1 -> 0000:8000 */
        movw    $1, dap_count
        movw    $CNT_BUF, dap_off
        movw    $0, dap_seg
        movl    $1, dap_lba
        mov     $0x42, %ah
        call    disk_io

        incl    CNT_BUF                 /* counter += 1 */

        /* fill NSECT sectors at PAT_SEG:0, sector k (from 2) with (counter + k) & 0xff */
        mov     $PAT_SEG, %ax
        mov     %ax, %es
        xor     %di, %di
        movb    CNT_BUF, %bl
        add     $2, %bl
        mov     $NSECT, %dx
        cld
fill:
        mov     %bl, %al
        mov     $512, %cx
        rep stosb
        inc     %bl
        dec     %dx
        jnz     fill
        xor     %ax, %ax
        mov     %ax, %es

        /* write the pattern: sectors 2 .. 2+NSECT-1 */
        movw    $NSECT, dap_count
        movw    $0, dap_off
        movw    $PAT_SEG, dap_seg
        movl    $2, dap_lba
        mov     $0x43, %ah
        call    disk_io

        /* write the counter back: sector 1 */
        movw    $1, dap_count
        movw    $CNT_BUF, dap_off
        movw    $0, dap_seg
        movl    $1, dap_lba
        mov     $0x43, %ah
        call    disk_io

        mov     $msg_done, %si
        call    puts
        mov     CNT_BUF+2, %ax
        call    puthex16
        mov     CNT_BUF, %ax
        call    puthex16
        mov     $msg_crlf, %si
        call    puts

        mov     $0, %al
        out     %al, $EXIT_PORT         /* QEMU exits with status (0 << 1) | 1 = 1 */
halt:
        cli
        hlt
        jmp     halt

/* int 13h extended call AH (42h read / 43h write, AL = 0: no verify) with the DAP below */
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
        mov     $1, %al
        out     %al, $EXIT_PORT         /* QEMU exits with status (1 << 1) | 1 = 3 */
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

/* puthex16: AX as 4 hex digits; puthex8: AL as 2; puthex4: low nibble of AL */
puthex16:
        push    %ax
        mov     %ah, %al
        call    puthex8
        pop     %ax
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

msg_boot:  .asciz "LIFEBOAT-GUEST boot\r\n"
msg_done:  .asciz "LIFEBOAT-GUEST done counter="
msg_err:   .asciz "LIFEBOAT-GUEST error ah="
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
