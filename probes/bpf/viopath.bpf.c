// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * viopath's kernel side: one object, one ring buffer, every probe the recorder can
 * attach. Programs emit fixed 48-byte records (viopath.h) and filter in the kernel:
 * block events only for the devices under the traced images, syscalls, direct IO and
 * io_uring submissions only for the traced process, io_uring completions only for the
 * rings that process submitted to.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "kernel.h"
#include "viopath.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Set by the recorder before loading: the one process traced, or 0 for the processes
 * in the tgids map (several VMs, or VMs found while recording). */
const volatile __u32 target_tgid = 0;
const volatile __u32 filter_devices = 1;
/* Wake the reader only when this much is waiting (it also polls on a timer). */
const volatile __u64 wakeup_bytes = 256 * 1024;
/* fs/aio.c's aio_fsync_work (from /proc/kallsyms): the work function of a linux-aio
 * fsync. 0: not known, the workqueue programs stay silent. */
const volatile __u64 aio_fsync_work = 0;

/*
 * Events go to one of VP_RING_SHARDS ring buffers chosen by CPU: one ring shared by all
 * CPUs costs ~600 ns per event under a two-CPU flood (its spinlock and positions bounce
 * between caches) against ~90 ns uncontended. The recorder sizes the shards at load
 * (unused ones to one page) and reads them all.
 */
#define RING(n)                                        \
	struct {                                       \
		__uint(type, BPF_MAP_TYPE_RINGBUF);    \
		__uint(max_entries, 8 << 20);          \
	} events##n SEC(".maps")
RING(0);
RING(1);
RING(2);
RING(3);

/* Events the ring buffer had no room for, per CPU and event type. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VP_MAX_TYPES);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* Block devices (kernel dev_t) under the traced images. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
} devices SEC(".maps");

/* The traced processes (tgid → the recorder's index of that VM) when target_tgid is
 * 0; the recorder adds and removes them while recording. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VP_MAX_PROCESSES);
	__type(key, __u32);
	__type(value, __u32);
} tgids SEC(".maps");

/* io_uring contexts the traced process submitted to. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 64);
	__type(key, __u64);
	__type(value, __u8);
} rings SEC(".maps");

/* Direct IOs the traced process began, by kiocb: their completion runs wherever the
 * last bio ends (an interrupt on any CPU, a kernel worker), rarely in the process. An
 * entry whose IO never completes (refused before any bio) ages out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} kiocbs SEC(".maps");

/* Completion programs that also run in interrupts, where the kernel skips a program
 * already running on that CPU (the interrupt came while it ran in a task, or in the
 * instructions the kernel runs around it) and counts the skip as a recursion miss.
 * Each has a second program on the same event, attached after it. The first marks the
 * event it runs for (its request, bio or kiocb) first thing; the second, which runs
 * right after it for the same event, writes the event only if the mark is another
 * event's: exactly the runs the kernel skipped, wherever the interrupt came. A
 * request, bio or kiocb completes on one CPU at a time, so a mark is never taken for
 * a nested event's. recovered counts what the second wrote; the recorder reports
 * skips minus recoveries. */
#define VP_NEST_RQ_COMPLETE 0
#define VP_NEST_BIO_COMPLETE 1
#define VP_NEST_DIO_COMPLETE 2
#define VP_NEST_SLOTS 3

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VP_NEST_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} handled SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VP_NEST_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} recovered SEC(".maps");

static __always_inline void mark_handled(__u32 slot, __u64 key)
{
	__u64 *h = bpf_map_lookup_elem(&handled, &slot);
	if (h)
		*h = key;
}

/* In the second program: whether the first did not run for this event (the kernel
 * skipped it), counting the recovery. */
static __always_inline int first_skipped(__u32 slot, __u64 key)
{
	__u64 *h = bpf_map_lookup_elem(&handled, &slot);
	if (!h || *h == key)
		return 0;
	__u64 *n = bpf_map_lookup_elem(&recovered, &slot);
	if (n)
		*n += 1;
	return 1;
}

/* QEMU uprobe argument specs, indexed by attach cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VP_MAX_USPECS);
	__type(key, __u32);
	__type(value, struct vp_uspec);
} uspecs SEC(".maps");

static __always_inline int tgid_traced(__u32 tgid)
{
	/* One process: a compare, not a map lookup, on every syscall of the host. */
	if (target_tgid)
		return tgid == target_tgid;
	return bpf_map_lookup_elem(&tgids, &tgid) != 0;
}

static __always_inline int traced(void)
{
	return tgid_traced(bpf_get_current_pid_tgid() >> 32);
}

static __always_inline int device_wanted(__u32 dev)
{
	return !filter_devices || bpf_map_lookup_elem(&devices, &dev);
}

static __always_inline void count_lost(__u32 type)
{
	__u64 *n = bpf_map_lookup_elem(&lost, &type);
	if (n)
		*n += 1;
}

/*
 * Every program that reads kernel structures is tp_btf: its arguments are typed BTF
 * pointers, so fields are read with plain (CO-RE relocated) loads that the verifier
 * guards against faults, not with a bpf_probe_read_kernel call per field (~30% of
 * the per-event cost on the block events).
 */
static __always_inline void emit_to(void *ring, __u32 cpu, __u8 type, __u8 sub, __u64 a0,
				    __u64 a1, __u64 a2, __u64 a3)
{
	struct vp_event *e = bpf_ringbuf_reserve(ring, sizeof(*e), 0);
	if (!e) {
		count_lost(type);
		return;
	}
	e->ts = bpf_ktime_get_ns();
	e->tid = (__u32)bpf_get_current_pid_tgid();
	e->type = type;
	e->sub = sub;
	e->cpu = (__u16)cpu;
	e->a[0] = a0;
	e->a[1] = a1;
	e->a[2] = a2;
	e->a[3] = a3;
	/* Batched wakeups: a per-event wakeup costs ~1 us. */
	__u64 avail = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
	bpf_ringbuf_submit(e, avail >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

static __always_inline void emit(__u8 type, __u8 sub, __u64 a0, __u64 a1, __u64 a2, __u64 a3)
{
	__u32 cpu = bpf_get_smp_processor_id();
	/* One call per shard, each with a constant map: the verifier needs to know which
	 * map a ring buffer helper gets. */
	switch (cpu % VP_RING_SHARDS) {
	case 0:
		emit_to(&events0, cpu, type, sub, a0, a1, a2, a3);
		break;
	case 1:
		emit_to(&events1, cpu, type, sub, a0, a1, a2, a3);
		break;
	case 2:
		emit_to(&events2, cpu, type, sub, a0, a1, a2, a3);
		break;
	default:
		emit_to(&events3, cpu, type, sub, a0, a1, a2, a3);
		break;
	}
}

/* ---- block layer ---- */

static __always_inline __u32 bio_dev(struct bio *bio)
{
	return bio->bi_bdev->bd_dev;
}

static __always_inline __u32 rq_dev(struct request *rq)
{
	struct gendisk *disk = rq->q->disk;
	if (!disk)
		return 0;
	return ((__u32)disk->major << 20) | (__u32)disk->first_minor;
}

static __always_inline void bio_event(__u8 type, struct bio *bio, __u64 a3)
{
	__u32 dev = bio_dev(bio);
	if (!device_wanted(dev))
		return;
	__u32 opf = bio->bi_opf;
	emit(type, opf & 0xff, (__u64)bio, bio->bi_iter.bi_sector,
	     ((__u64)dev << 32) | bio->bi_iter.bi_size, a3);
}

static __always_inline void rq_event(__u8 type, struct request *rq, __u64 a3)
{
	__u32 dev = rq_dev(rq);
	if (!device_wanted(dev))
		return;
	__u32 flags = rq->cmd_flags;
	emit(type, flags & 0xff, (__u64)rq, rq->__sector,
	     ((__u64)dev << 32) | rq->__data_len, a3);
}

SEC("tp_btf/block_bio_queue")
int BPF_PROG(bio_queue, struct bio *bio)
{
	bio_event(VP_BIO_QUEUE, bio, bio->bi_opf);
	return 0;
}

SEC("tp_btf/block_bio_remap")
int BPF_PROG(bio_remap, struct bio *bio, dev_t old_dev, sector_t old_sector)
{
	__u32 dev = bio_dev(bio);
	int from_wanted = device_wanted(old_dev);
	if (!device_wanted(dev)) {
		if (!from_wanted)
			return 0;
		/*
		 * A bio moving down from a device under the images to one the recorder did
		 * not know: a device with no number in sysfs (an NVMe multipath head's
		 * hidden path disk), or stacked later. Its requests are this bio's: the
		 * filter follows it there.
		 */
		__u8 one = 1;
		bpf_map_update_elem(&devices, &dev, &one, BPF_NOEXIST);
		/* Its requests are its disk's, if it is a partition. */
		struct gendisk *disk = bio->bi_bdev->bd_disk;
		if (disk) {
			__u32 whole = ((__u32)disk->major << 20) | (__u32)disk->first_minor;
			bpf_map_update_elem(&devices, &whole, &one, BPF_NOEXIST);
		}
	}
	emit(VP_BIO_REMAP, bio->bi_opf & 0xff, (__u64)bio,
	     bio->bi_iter.bi_sector, ((__u64)dev << 32) | old_dev, old_sector);
	return 0;
}

SEC("tp_btf/block_split")
int BPF_PROG(bio_split, struct bio *bio, unsigned int new_sector)
{
	bio_event(VP_BIO_SPLIT, bio, new_sector);
	return 0;
}

SEC("tp_btf/block_bio_backmerge")
int BPF_PROG(bio_backmerge, struct bio *bio)
{
	bio_event(VP_BIO_MERGE, bio, 1);
	return 0;
}

SEC("tp_btf/block_bio_frontmerge")
int BPF_PROG(bio_frontmerge, struct bio *bio)
{
	bio_event(VP_BIO_MERGE, bio, 2);
	return 0;
}

SEC("tp_btf/block_bio_complete")
int BPF_PROG(bio_complete, struct request_queue *q, struct bio *bio)
{
	mark_handled(VP_NEST_BIO_COMPLETE, (__u64)bio);
	bio_event(VP_BIO_COMPLETE, bio, 0);
	return 0;
}

SEC("tp_btf/block_bio_complete")
int BPF_PROG(bio_complete_nested, struct request_queue *q, struct bio *bio)
{
	if (first_skipped(VP_NEST_BIO_COMPLETE, (__u64)bio))
		bio_event(VP_BIO_COMPLETE, bio, 0);
	return 0;
}

SEC("tp_btf/block_rq_insert")
int BPF_PROG(rq_insert, struct request *rq)
{
	rq_event(VP_RQ_INSERT, rq, (__u64)rq->bio);
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(rq_issue, struct request *rq)
{
	rq_event(VP_RQ_ISSUE, rq, (__u64)rq->bio);
	return 0;
}

SEC("tp_btf/block_rq_merge")
int BPF_PROG(rq_merge, struct request *rq)
{
	rq_event(VP_RQ_MERGE, rq, 0);
	return 0;
}

/* tp_btf, not a plain tracepoint: completions run in IRQ context, where a plain
 * tracepoint program misses events whenever another BPF program is running. */
SEC("tp_btf/block_rq_complete")
int BPF_PROG(rq_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	mark_handled(VP_NEST_RQ_COMPLETE, (__u64)rq);
	rq_event(VP_RQ_COMPLETE, rq, ((__u64)error << 32) | nr_bytes);
	return 0;
}

/* A loop device completes a flush or a discard in its worker (a task), where a disk's
 * completion interrupt can come in. */
SEC("tp_btf/block_rq_complete")
int BPF_PROG(rq_complete_nested, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	if (first_skipped(VP_NEST_RQ_COMPLETE, (__u64)rq))
		rq_event(VP_RQ_COMPLETE, rq, ((__u64)error << 32) | nr_bytes);
	return 0;
}

/* ---- syscalls of the traced process ---- */

/* The syscalls/sys_enter_* tracepoint record: common header, nr, then six args. */
struct sys_enter_ctx {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 args[6];
};

struct sys_exit_ctx {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__s64 ret;
};

#define SYSCALL_EXIT(name, id)                                                    \
	SEC("tracepoint/syscalls/sys_exit_" #name)                                \
	int exit_##name(struct sys_exit_ctx *ctx)                                 \
	{                                                                         \
		if (traced())                                                     \
			emit(VP_SYS_EXIT, id, ctx->ret, 0, 0, 0);                 \
		return 0;                                                         \
	}

#define SYSCALL_PAIR(name, id)                                                    \
	SEC("tracepoint/syscalls/sys_enter_" #name)                               \
	int enter_##name(struct sys_enter_ctx *ctx)                               \
	{                                                                         \
		if (traced())                                                     \
			emit(VP_SYS_ENTER, id, ctx->args[0], ctx->args[3],        \
			     ctx->args[2], ctx->args[1]);                         \
		return 0;                                                         \
	}                                                                         \
	SYSCALL_EXIT(name, id)

/* fdatasync and fsync have one argument: their records end after args[0]. */
#define SYSCALL_FD(name, id)                                                      \
	SEC("tracepoint/syscalls/sys_enter_" #name)                               \
	int enter_##name(struct sys_enter_ctx *ctx)                               \
	{                                                                         \
		if (traced())                                                     \
			emit(VP_SYS_ENTER, id, ctx->args[0], 0, 0, 0);            \
		return 0;                                                         \
	}                                                                         \
	SYSCALL_EXIT(name, id)

/* io_submit has three arguments: its record ends before args[3], and a program that
 * reads past a tracepoint's record does not attach to it. */
SEC("tracepoint/syscalls/sys_enter_io_submit")
int enter_io_submit(struct sys_enter_ctx *ctx)
{
	if (traced())
		emit(VP_SYS_ENTER, VP_SC_IO_SUBMIT, ctx->args[0], 0, ctx->args[2], ctx->args[1]);
	return 0;
}

SYSCALL_EXIT(io_submit, VP_SC_IO_SUBMIT)

/* For pread64/pwrite64 the offset is args[3]; for preadv/pwritev(2) args[3] is the
 * low half of pos (x86_64: the whole pos). a0 fd, a1 offset, a2 count, a3 buffer/iov. */
SYSCALL_PAIR(pread64, VP_SC_PREAD64)
SYSCALL_PAIR(pwrite64, VP_SC_PWRITE64)
SYSCALL_PAIR(preadv, VP_SC_PREADV)
SYSCALL_PAIR(pwritev, VP_SC_PWRITEV)
SYSCALL_PAIR(preadv2, VP_SC_PREADV2)
SYSCALL_PAIR(pwritev2, VP_SC_PWRITEV2)
SYSCALL_PAIR(io_getevents, VP_SC_IO_GETEVENTS)
SYSCALL_PAIR(io_pgetevents, VP_SC_IO_PGETEVENTS)
/* io_uring_enter(fd, to_submit, min_complete, flags, ...): a0 fd, a1 flags, a2 min_complete, a3 to_submit. */
SYSCALL_PAIR(io_uring_enter, VP_SC_IO_URING_ENTER)
SYSCALL_FD(fdatasync, VP_SC_FDATASYNC)
SYSCALL_FD(fsync, VP_SC_FSYNC)

/* fallocate(fd, mode, offset, len): a0 fd, a1 offset, a2 length, a3 mode, the same
 * places as a pread's. */
SEC("tracepoint/syscalls/sys_enter_fallocate")
int enter_fallocate(struct sys_enter_ctx *ctx)
{
	if (traced())
		emit(VP_SYS_ENTER, VP_SC_FALLOCATE, ctx->args[0], ctx->args[2], ctx->args[3],
		     ctx->args[1]);
	return 0;
}

SYSCALL_EXIT(fallocate, VP_SC_FALLOCATE)

/* ---- io_uring ---- */

/* An SQE submitted: the ring is remembered, so that only its completions are kept. */
static __always_inline void uring_submitted(__u64 ring, __u64 req, __u64 user_data, __u8 opcode)
{
	__u8 one = 1;
	bpf_map_update_elem(&rings, &ring, &one, BPF_ANY);
	emit(VP_URING_SUBMIT, opcode, user_data, req, ring, opcode);
}

SEC("tp_btf/io_uring_submit_req")
int BPF_PROG(uring_submit, struct io_kiocb *req)
{
	if (traced())
		uring_submitted((__u64)req->ctx, (__u64)req, req->cqe.user_data, req->opcode);
	return 0;
}

/* The same tracepoint under its name before 6.4, with the request as its argument. */
SEC("tp_btf/io_uring_submit_sqe")
int BPF_PROG(uring_submit_sqe, struct io_kiocb *req)
{
	if (traced())
		uring_submitted((__u64)req->ctx, (__u64)req, req->cqe.user_data, req->opcode);
	return 0;
}

/*
 * Before the request was its argument (5.19 to 6.0): (ctx, req, user_data, opcode, ...)
 * as plain values. The recorder tries it only after the typed program above, which the
 * verifier refuses there (a void pointer cannot be followed), and only from 5.19 on
 * (5.15 passed opcode before user_data).
 */
SEC("tp_btf/io_uring_submit_sqe")
int BPF_PROG(uring_submit_sqe_args, void *ring, void *req, __u64 user_data, __u8 opcode)
{
	if (traced())
		uring_submitted((__u64)ring, (__u64)req, user_data, opcode);
	return 0;
}

static __always_inline void uring_completed(__u64 ring, __u64 req, __u64 user_data, __s64 res)
{
	if (bpf_map_lookup_elem(&rings, &ring))
		emit(VP_URING_COMPLETE, 0, user_data, req, ring, (__u64)res);
}

SEC("tp_btf/io_uring_complete")
int BPF_PROG(uring_complete, struct io_ring_ctx *ring, void *req, struct io_uring_cqe *cqe)
{
	uring_completed((__u64)ring, (__u64)req, cqe->user_data, cqe->res);
	return 0;
}

/*
 * Before the CQE was its argument (5.19 to 6.13): (ctx, req, user_data, res, cflags,
 * extra1, extra2) as plain values. Tried after the typed program (refused there: the
 * third argument is no pointer), from 5.19 on (5.15 had no request argument).
 */
SEC("tp_btf/io_uring_complete")
int BPF_PROG(uring_complete_args, void *ring, void *req, __u64 user_data, int res)
{
	uring_completed((__u64)ring, (__u64)req, user_data, res);
	return 0;
}

/* ---- iomap direct IO: the filesystem's part of an O_DIRECT request ---- */

SEC("tp_btf/iomap_dio_rw_begin")
int BPF_PROG(dio_begin, struct kiocb *iocb, struct iov_iter *iter, unsigned int dio_flags, __u64 done_before)
{
	if (!traced())
		return 0;
	__u64 k = (__u64)iocb;
	__u8 one = 1;
	bpf_map_update_elem(&kiocbs, &k, &one, BPF_ANY);
	emit(VP_DIO_BEGIN, 0, (__u64)iocb, iocb->ki_pos, iter->count,
	     iocb->ki_filp->f_inode->i_ino);
	return 0;
}

SEC("tp_btf/iomap_iter_dstmap")
int BPF_PROG(dio_map, struct inode *inode, struct iomap *iomap)
{
	if (!traced())
		return 0;
	__u16 type = iomap->type;
	emit(VP_DIO_MAP, type, inode->i_ino, iomap->offset,
	     iomap->length, iomap->addr);
	return 0;
}

static __always_inline void dio_complete_event(struct kiocb *iocb, int error, __s64 ret)
{
	/* Not traced(): the task interrupted or the worker running is anyone's. */
	__u64 k = (__u64)iocb;
	if (bpf_map_delete_elem(&kiocbs, &k) != 0 && !traced())
		return;
	emit(VP_DIO_COMPLETE, 0, (__u64)iocb, ret, (__u64)(__s64)error, 0);
}

SEC("tp_btf/iomap_dio_complete")
int BPF_PROG(dio_complete, struct kiocb *iocb, int error, __s64 ret)
{
	mark_handled(VP_NEST_DIO_COMPLETE, (__u64)iocb);
	dio_complete_event(iocb, error, ret);
	return 0;
}

/* A synchronous direct IO completes in its task; an asynchronous one's in the
 * interrupt that ends its last bio, which can come while the first runs. */
SEC("tp_btf/iomap_dio_complete")
int BPF_PROG(dio_complete_nested, struct kiocb *iocb, int error, __s64 ret)
{
	if (first_skipped(VP_NEST_DIO_COMPLETE, (__u64)iocb))
		dio_complete_event(iocb, error, ret);
	return 0;
}

/* ---- filesystem and device-mapper internals: fentry/fexit, kprobes as fallback ----
 * Hosts differ in what they allow (this project's CI machine allows neither): the
 * recorder tries fentry/fexit first, then the kprobe/kretprobe twin, and says which.
 * The fs programs cover ext4's read_iter/write_iter (buffered and direct IO alike);
 * the dm programs see bios entering a dm device and their clones completing. */

static __always_inline void fs_enter(__u8 write, struct kiocb *iocb, struct iov_iter *it)
{
	if (traced())
		emit(VP_FS_ENTER, write, (__u64)iocb, BPF_CORE_READ(iocb, ki_pos),
		     BPF_CORE_READ(it, count), BPF_CORE_READ(iocb, ki_filp, f_inode, i_ino));
}

static __always_inline void fs_exit(__u8 write, struct kiocb *iocb, long ret)
{
	if (traced())
		emit(VP_FS_EXIT, write, (__u64)iocb, ret, 0, 0);
}

SEC("fentry/ext4_file_read_iter")
int BPF_PROG(fs_read_enter, struct kiocb *iocb, struct iov_iter *to)
{
	fs_enter(0, iocb, to);
	return 0;
}

SEC("fexit/ext4_file_read_iter")
int BPF_PROG(fs_read_exit, struct kiocb *iocb, struct iov_iter *to, long ret)
{
	fs_exit(0, iocb, ret);
	return 0;
}

SEC("fentry/ext4_file_write_iter")
int BPF_PROG(fs_write_enter, struct kiocb *iocb, struct iov_iter *from)
{
	fs_enter(1, iocb, from);
	return 0;
}

SEC("fexit/ext4_file_write_iter")
int BPF_PROG(fs_write_exit, struct kiocb *iocb, struct iov_iter *from, long ret)
{
	fs_exit(1, iocb, ret);
	return 0;
}

SEC("kprobe/ext4_file_read_iter")
int BPF_KPROBE(fs_read_enter_kp, struct kiocb *iocb, struct iov_iter *to)
{
	fs_enter(0, iocb, to);
	return 0;
}

/* A kretprobe has no arguments: the exit carries no kiocb, the thread id pairs it. */
SEC("kretprobe/ext4_file_read_iter")
int BPF_KRETPROBE(fs_read_exit_kp, long ret)
{
	fs_exit(0, 0, ret);
	return 0;
}

SEC("kprobe/ext4_file_write_iter")
int BPF_KPROBE(fs_write_enter_kp, struct kiocb *iocb, struct iov_iter *from)
{
	fs_enter(1, iocb, from);
	return 0;
}

SEC("kretprobe/ext4_file_write_iter")
int BPF_KRETPROBE(fs_write_exit_kp, long ret)
{
	fs_exit(1, 0, ret);
	return 0;
}

static __always_inline void dm_bio(__u8 type, struct bio *bio)
{
	__u32 dev = BPF_CORE_READ(bio, bi_bdev, bd_dev);
	if (!device_wanted(dev))
		return;
	emit(type, BPF_CORE_READ(bio, bi_opf) & 0xff, (__u64)bio,
	     BPF_CORE_READ(bio, bi_iter.bi_sector),
	     ((__u64)dev << 32) | BPF_CORE_READ(bio, bi_iter.bi_size), 0);
}

/* ---- fsync in the filesystem ----
 * A tracepoint, so it attaches here; ext4's, the filesystem the images live on in the
 * tests. Kept for the traced process (its workers' fdatasync, its io_uring workers) and
 * for any thread syncing a file on a traced device: linux-aio runs an fsync (QEMU's
 * flush with aio=native) in a kernel worker, outside the process. */

static __always_inline void fs_sync(__u8 sub, struct inode *inode, __s64 arg)
{
	/* A module tracepoint's pointer arguments may be null to the verifier (checked as
	 * trusted-or-null), and so may what is read through them. */
	if (!inode)
		return;
	__u32 dev = inode->i_sb->s_dev;
	if (traced() || (filter_devices && device_wanted(dev)))
		emit(VP_FS_SYNC, sub, inode->i_ino, dev, (__u64)arg, 0);
}

SEC("tp_btf/ext4_sync_file_enter")
int BPF_PROG(sync_enter, struct file *file, int datasync)
{
	if (!file)
		return 0;
	fs_sync(0, file->f_inode, datasync);
	return 0;
}

SEC("tp_btf/ext4_sync_file_exit")
int BPF_PROG(sync_exit, struct inode *inode, int ret)
{
	fs_sync(1, inode, ret);
	return 0;
}

/* Any filesystem: a linux-aio fsync is a work item whose function is aio_fsync_work.
 * Its start names the file (the work is inside the request, after the file pointer);
 * its end is after the fsync returned and the completion was posted, when the request
 * may be freed, so it carries only the work pointer. Every work item of the machine
 * passes here: the function compare comes first. */
SEC("tp_btf/workqueue_execute_start")
int BPF_PROG(aio_fsync_start, struct work_struct *work)
{
	if (!aio_fsync_work || (__u64)work->func != aio_fsync_work)
		return 0;
	struct fsync_iocb *req =
		(void *)work - bpf_core_field_offset(struct fsync_iocb, work);
	struct inode *inode = BPF_CORE_READ(req, file, f_inode);
	__u32 dev = BPF_CORE_READ(inode, i_sb, s_dev);
	if (filter_devices && !device_wanted(dev))
		return 0;
	emit(VP_FS_SYNC, 2, BPF_CORE_READ(inode, i_ino), dev, BPF_CORE_READ(req, datasync),
	     (__u64)work);
	return 0;
}

/* A plain tracepoint: tp_btf refuses to read its function-pointer argument. It runs in
 * the worker's process context, not in an interrupt. */
struct workqueue_execute_end_ctx {
	__u64 common;
	__u64 work;
	__u64 function;
};

SEC("tracepoint/workqueue/workqueue_execute_end")
int aio_fsync_end(struct workqueue_execute_end_ctx *ctx)
{
	if (!aio_fsync_work || ctx->function != aio_fsync_work)
		return 0;
	emit(VP_FS_SYNC, 3, 0, 0, 0, ctx->work);
	return 0;
}

SEC("fentry/dm_submit_bio")
int BPF_PROG(dm_submit, struct bio *bio)
{
	dm_bio(VP_DM_SUBMIT, bio);
	return 0;
}

SEC("fentry/clone_endio")
int BPF_PROG(dm_endio, struct bio *bio)
{
	dm_bio(VP_DM_ENDIO, bio);
	return 0;
}

SEC("kprobe/dm_submit_bio")
int BPF_KPROBE(dm_submit_kp, struct bio *bio)
{
	dm_bio(VP_DM_SUBMIT, bio);
	return 0;
}

SEC("kprobe/clone_endio")
int BPF_KPROBE(dm_endio_kp, struct bio *bio)
{
	dm_bio(VP_DM_ENDIO, bio);
	return 0;
}

/* ---- buffered writes: the dirty-page throttle ---- */

/* The plain tracepoint's record (its layout has been the same since 4.x; the raw
 * tracepoint's arguments changed in 6.2). */
struct balance_dirty_pages_ctx {
	__u64 common;
	char bdi[32];
	__u64 limit;
	__u64 setpoint;
	__u64 dirty;
	__u64 wb_setpoint;
	__u64 wb_dirty;
	__u64 dirty_ratelimit;
	__u64 task_ratelimit;
	__u32 dirtied;
	__u32 dirtied_pause;
	__u64 paused;
	__s64 pause;
	__u64 period;
	__s64 think;
	__u64 cgroup_ino;
};

SEC("tracepoint/writeback/balance_dirty_pages")
int dirty_throttle(struct balance_dirty_pages_ctx *ctx)
{
	if (traced())
		emit(VP_DIRTY_THROTTLE, 0, (__u64)ctx->pause, ctx->period, ctx->dirtied,
		     ctx->paused);
	return 0;
}

/* ---- threads of the traced processes ---- */

/* A thread started (fork's tracepoint fires for threads too, in the parent): events
 * carry thread ids, and this says whose. A child process is not traced. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(thread_start, struct task_struct *parent, struct task_struct *child)
{
	__u32 tgid = child->tgid;
	if (tgid == (__u32)parent->tgid && tgid_traced(tgid))
		emit(VP_THREAD, 0, (__u32)child->pid, tgid, 0, 0);
	return 0;
}

/* ---- KVM: the guest's notifications and the interrupts injected back ---- */

/* Plain tracepoint records: the 8-byte common header, then the event's fields. */
struct kvm_fast_mmio_ctx {
	__u64 common;
	__u64 gpa;
};

struct kvm_mmio_ctx {
	__u64 common;
	__u32 type;
	__u32 len;
	__u64 gpa;
	__u64 val;
};

struct kvm_msi_ctx {
	__u64 common;
	__u64 address;
	__u64 data;
};

#define KVM_TRACE_MMIO_WRITE 2

/* A guest write to an ioeventfd-backed doorbell (virtio-pci notify), in the vCPU
 * thread of the traced VM. */
SEC("tracepoint/kvm/kvm_fast_mmio")
int kvm_fast_mmio(struct kvm_fast_mmio_ctx *ctx)
{
	if (traced())
		emit(VP_KVM_MMIO, 0, ctx->gpa, 0, 0, 0);
	return 0;
}

SEC("tracepoint/kvm/kvm_mmio")
int kvm_mmio(struct kvm_mmio_ctx *ctx)
{
	if (traced() && ctx->type == KVM_TRACE_MMIO_WRITE)
		emit(VP_KVM_MMIO, 1, ctx->gpa, ctx->len, ctx->val, 0);
	return 0;
}

/* An MSI injected into the guest (irqfd): the completion interrupt. Seen when the
 * traced QEMU's thread signals the irqfd; injections deferred to a kernel worker run
 * in another process and are filtered out. */
SEC("tracepoint/kvm/kvm_msi_set_irq")
int kvm_msi_set_irq(struct kvm_msi_ctx *ctx)
{
	if (traced())
		emit(VP_KVM_MSI, 0, ctx->address, ctx->data, 0, 0);
	return 0;
}

/* ---- QEMU entry uprobes (never uretprobes: they crash QEMU's coroutines) ---- */

/* The six argument registers, loaded at constant offsets: the verifier refuses a
 * ctx access at a computed offset, which is what a switch on the index compiles to. */
struct args6 {
	__u64 r[6];
};

static __always_inline void load_args(struct pt_regs *ctx, struct args6 *a)
{
	a->r[0] = PT_REGS_PARM1(ctx);
	a->r[1] = PT_REGS_PARM2(ctx);
	a->r[2] = PT_REGS_PARM3(ctx);
	a->r[3] = PT_REGS_PARM4(ctx);
	a->r[4] = PT_REGS_PARM5(ctx);
	a->r[5] = ctx->r9; /* 6th argument (x86-64); libbpf 1.1 has no PT_REGS_PARM6 */
	/* Keep the copies: stop clang from folding them back into ctx loads. */
	asm volatile("" : : "r"(a) : "memory");
}

static __always_inline __u64 read_arg(struct args6 *regs, struct vp_arg *a)
{
	__u64 reg = regs->r[a->reg < 6 ? a->reg : 5];
	__u64 v = 0;
	switch (a->kind) {
	case VP_ARG_REG:
		return reg;
	case VP_ARG_DEREF64:
		bpf_probe_read_user(&v, 8, (void *)(reg + a->off));
		return v;
	case VP_ARG_DEREF32:
		bpf_probe_read_user(&v, 4, (void *)(reg + a->off));
		return v;
	case VP_ARG_REG_PAIR:
		return (__u32)reg | (__u64)(__u32)regs->r[a->off < 6 ? a->off : 5] << 32;
	default:
		return 0;
	}
}

SEC("uprobe")
int qemu_entry(struct pt_regs *ctx)
{
	__u32 idx = (__u32)bpf_get_attach_cookie(ctx);
	struct vp_uspec *s = bpf_map_lookup_elem(&uspecs, &idx);
	if (!s)
		return 0;
	struct args6 regs;
	load_args(ctx, &regs);
	emit(VP_QEMU, s->probe, read_arg(&regs, &s->arg[0]), read_arg(&regs, &s->arg[1]),
	     read_arg(&regs, &s->arg[2]), read_arg(&regs, &s->arg[3]));
	return 0;
}
