/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The few kernel structures the programs read, declared with only the fields used.
 * preserve_access_index makes every access a CO-RE relocation: the loader finds each
 * field by name in the running kernel's BTF, so no vmlinux.h is needed and the compiled
 * object does not depend on the machine that built it.
 */
#ifndef VIOPATH_KERNEL_H
#define VIOPATH_KERNEL_H

typedef __u32 dev_t;
typedef __u64 sector_t;
typedef __u32 blk_opf_t;
typedef __u8 blk_status_t;
struct work_struct;

#define PAI __attribute__((preserve_access_index))

/* pid is the thread's id, tgid its process's. */
struct task_struct {
	int pid;
	int tgid;
} PAI;

struct block_device {
	dev_t bd_dev;
	struct gendisk *bd_disk;
} PAI;

struct bvec_iter {
	sector_t bi_sector;
	unsigned int bi_size;
} PAI;

struct bio {
	struct block_device *bi_bdev;
	blk_opf_t bi_opf;
	struct bvec_iter bi_iter;
} PAI;

struct gendisk {
	int major;
	int first_minor;
} PAI;

struct request_queue {
	struct gendisk *disk;
} PAI;

struct request {
	struct request_queue *q;
	blk_opf_t cmd_flags;
	unsigned int __data_len;
	sector_t __sector;
	struct bio *bio;
} PAI;

struct io_cqe {
	__u64 user_data;
	__s32 res;
} PAI;

struct io_ring_ctx {
	int dummy;
} PAI;

struct io_kiocb {
	__u8 opcode;
	struct io_ring_ctx *ctx;
	struct io_cqe cqe;
} PAI;

struct io_uring_cqe {
	__u64 user_data;
	__s32 res;
	__u32 flags;
};

struct super_block {
	dev_t s_dev;
} PAI;

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
} PAI;

struct file {
	struct inode *f_inode;
} PAI;

typedef void (*work_func_t)(struct work_struct *work);

struct work_struct {
	work_func_t func;
} PAI;

/* fs/aio.c: a linux-aio fsync request, run by a kernel worker. */
struct fsync_iocb {
	struct file *file;
	struct work_struct work;
	_Bool datasync;
} PAI;

struct kiocb {
	struct file *ki_filp;
	long long ki_pos;
} PAI;

struct iov_iter {
	__u64 count;
} PAI;

struct iomap {
	__u64 addr;
	long long offset;
	__u64 length;
	__u16 type;
} PAI;

#endif
