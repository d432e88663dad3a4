/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The event ABI shared by the eBPF programs (viopath.bpf.c), the recorder and the
 * reporter. Rust mirrors these definitions in probes/src/abi.rs with layout assertions;
 * change both together and bump VP_ABI_VERSION.
 */
#ifndef VIOPATH_H
#define VIOPATH_H

#define VP_ABI_VERSION 1

/* Every event is one fixed 48-byte record. */
struct vp_event {
	__u64 ts;      /* CLOCK_MONOTONIC, ns (bpf_ktime_get_ns) */
	__u32 tid;     /* thread that hit the probe (in IRQ context: whoever ran) */
	__u8 type;     /* enum vp_type */
	__u8 sub;      /* type-specific: block op, QEMU probe id, syscall id */
	__u16 cpu;
	__u64 a[4];    /* type-specific payload, see enum vp_type */
};

/* Kernel dev_t encoding: major << 20 | minor. */
enum vp_type {
	/* Block layer (sub = REQ_OP). a2 = dev << 32 | bytes, except for remaps. */
	VP_BIO_QUEUE = 1,      /* a0 bio, a1 sector, a3 opf */
	VP_BIO_REMAP = 2,      /* a0 bio, a1 new sector, a2 new dev << 32 | old dev, a3 old sector */
	VP_BIO_SPLIT = 3,      /* a0 bio, a1 sector, a3 new_sector (split point) */
	VP_BIO_MERGE = 4,      /* a0 bio, a1 sector, a3 1 = back merge, 2 = front merge */
	VP_BIO_COMPLETE = 5,   /* a0 bio, a1 sector, a3 status */
	VP_RQ_INSERT = 6,      /* a0 request, a1 sector, a3 first bio */
	VP_RQ_ISSUE = 7,       /* a0 request, a1 sector, a3 first bio */
	VP_RQ_COMPLETE = 8,    /* a0 request, a1 sector, a3 status << 32 | bytes completed */
	VP_RQ_MERGE = 9,       /* a0 request absorbed into another, a1 sector, a3 0 */
	/* Syscalls of the traced process (sub = enum vp_syscall). */
	VP_SYS_ENTER = 16,     /* a0 fd, a1 offset (or ctx/to_submit), a2 count, a3 arg 3 */
	VP_SYS_EXIT = 17,      /* a0 return value */
	/* io_uring. */
	VP_URING_SUBMIT = 18,  /* a0 user_data, a1 req, a2 ctx, a3 opcode */
	VP_URING_COMPLETE = 19,/* a0 user_data, a1 req, a2 ctx, a3 res */
	/* iomap direct IO (VFS + filesystem). */
	VP_DIO_BEGIN = 20,     /* a0 kiocb, a1 pos, a2 count, a3 inode number */
	VP_DIO_MAP = 21,       /* a0 inode number, a1 file offset, a2 length, a3 disk byte address (or ~0: hole) */
	VP_DIO_COMPLETE = 22,  /* a0 kiocb, a1 ret, a2 error */
	/* KVM (the traced VM's vCPU and I/O threads). */
	VP_KVM_MMIO = 24,      /* sub 0 fast MMIO (ioeventfd), 1 MMIO write; a0 guest physical address, a1 length, a2 value */
	VP_KVM_MSI = 25,       /* a0 MSI address, a1 MSI data */
	/* Filesystem and device-mapper internals (fentry/fexit or kprobes, where allowed). */
	VP_FS_ENTER = 26,      /* sub 0 read, 1 write; a0 kiocb, a1 pos, a2 bytes, a3 inode number */
	VP_FS_EXIT = 27,       /* sub 0 read, 1 write; a0 kiocb (0 from a kretprobe), a1 return value */
	VP_DM_SUBMIT = 28,     /* bio entering a dm device; sub REQ_OP, a0 bio, a1 sector, a2 dev << 32 | bytes */
	VP_DM_ENDIO = 29,      /* a dm clone bio completing; same fields */
	/* fsync/fdatasync in the filesystem (ext4), in whatever thread runs it: a QEMU
	 * worker's syscall, an io_uring worker, or the kernel worker of an aio fsync. */
	VP_FS_SYNC = 30,       /* ext4 fsync: sub 0 begin, 1 end; a0 inode number, a1 fs device, a2 datasync (begin) or return value (end).
	                        * linux-aio fsync work, any filesystem: sub 2 begun (a0 inode, a1 device, a2 datasync, a3 work), sub 3 returned (a3 work) */
	/* QEMU entry uprobes (sub = probe id, see the recorder's catalog). */
	VP_QEMU = 32,          /* a0 key pointer, a1 offset, a2 bytes, a3 aux */
	/* A traced thread about to sleep in balance_dirty_pages (its buffered write went
	 * over the dirty limits): a0 pause (jiffies, signed), a1 period (jiffies), a2 pages
	 * it dirtied since its last pause, a3 jiffies it already paused in this call. */
	VP_DIRTY_THROTTLE = 33,
	/* A thread of a traced process started: a0 its thread id, a1 the process id. With
	 * the trace's list of each process's threads at its start, it says which process
	 * (VM) an event's thread id belongs to. */
	VP_THREAD = 34,
};

enum vp_syscall {
	VP_SC_PREAD64 = 1,
	VP_SC_PWRITE64 = 2,
	VP_SC_PREADV = 3,
	VP_SC_PWRITEV = 4,
	VP_SC_PREADV2 = 5,
	VP_SC_PWRITEV2 = 6,
	VP_SC_IO_SUBMIT = 7,
	VP_SC_IO_GETEVENTS = 8,
	VP_SC_IO_URING_ENTER = 9,
	VP_SC_IO_PGETEVENTS = 10,
	VP_SC_FDATASYNC = 11,  /* a0 fd: QEMU's flush of an image (aio=threads) */
	VP_SC_FSYNC = 12,
	VP_SC_FALLOCATE = 13,  /* a0 fd, a1 offset, a2 length, a3 mode: QEMU's discard and write zeroes (aio=threads) */
};

/*
 * How a QEMU uprobe reads its arguments: for each of the four payload slots, an
 * argument register and optionally a dereference. Filled by the recorder from its
 * per-QEMU-version table; the uprobe's attach cookie is the index of its spec.
 */
enum vp_arg_kind {
	VP_ARG_NONE = 0,
	VP_ARG_REG = 1,        /* the argument register itself */
	VP_ARG_DEREF64 = 2,    /* *(u64 *)(reg + off) in QEMU's memory */
	VP_ARG_DEREF32 = 3,    /* *(u32 *)(reg + off) */
	VP_ARG_REG_PAIR = 4,   /* (u32)reg | (u32)argument `off` << 32: two int arguments */
};

struct vp_arg {
	__u8 kind;
	__u8 reg;              /* argument index 0..5 */
	__u16 off;
};

struct vp_uspec {
	__u32 probe;           /* becomes vp_event.sub */
	__u32 pad;
	struct vp_arg arg[4];
};

/* Ring buffers events are spread over, by CPU number modulo this. */
#define VP_RING_SHARDS 4

/* Processes one recording traces at most (the tgids map). */
#define VP_MAX_PROCESSES 256

#define VP_MAX_USPECS 64
#define VP_MAX_TYPES 64

#endif
