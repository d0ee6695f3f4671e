/*
 * iscsi-load: a libiscsi load generator for scripts/bench-tcp.sh.
 *
 * libiscsi's own iscsi-perf only issues READ16, so it cannot measure writes.
 * This tool keeps a fixed number of READ16 or WRITE16 commands in flight on
 * one session for a fixed time, sequential or at random I/O-size-aligned
 * offsets, and prints what it completed:
 *
 *     iscsi-load [-w] [-R] [-s BYTES] [-q DEPTH] [-t SECONDS] [-i INITIATOR] URL
 *     ios=N seconds=S iops=X mib_s=Y
 *
 * URL is a libiscsi URL, iscsi://HOST:PORT/TARGET-IQN/LUN.  Any command that
 * does not end in GOOD status stops the run with exit status 1: a benchmark
 * must not count failed I/O.  Header and data digests are off.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

struct load {
	struct iscsi_context *iscsi;
	int lun;
	int write;
	int random;
	uint32_t block_size;
	uint64_t num_blocks;
	uint32_t io_blocks;
	uint64_t io_slots; /* number of io_blocks-sized slots on the LUN */
	uint64_t next_slot;
	uint64_t rng;
	unsigned char *write_data;
	int depth;
	int in_flight;
	int stopping;
	uint64_t completed;
	int failed;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* xorshift64*: enough randomness to spread offsets, no libc state. */
static uint64_t next_random(struct load *l)
{
	l->rng ^= l->rng >> 12;
	l->rng ^= l->rng << 25;
	l->rng ^= l->rng >> 27;
	return l->rng * 0x2545F4914F6CDD1DULL;
}

static void issue(struct load *l);

static void completed(struct iscsi_context *iscsi, int status, void *command_data,
		      void *private_data)
{
	struct load *l = private_data;
	struct scsi_task *task = command_data;

	l->in_flight--;
	if (status != SCSI_STATUS_GOOD) {
		if (status == SCSI_STATUS_CHECK_CONDITION && task != NULL)
			fprintf(stderr, "iscsi-load: %s failed: sense key %d ascq 0x%04x\n",
				l->write ? "WRITE16" : "READ16", task->sense.key, task->sense.ascq);
		else
			fprintf(stderr, "iscsi-load: %s failed (status %d): %s\n",
				l->write ? "WRITE16" : "READ16", status, iscsi_get_error(iscsi));
		l->failed = 1;
		l->stopping = 1;
	} else {
		l->completed++;
	}
	if (task != NULL)
		scsi_free_scsi_task(task);
	issue(l);
}

/* Fill the queue up to the configured depth unless the run is over. */
static void issue(struct load *l)
{
	while (!l->stopping && l->in_flight < l->depth) {
		uint64_t slot;
		struct scsi_task *task;

		if (l->random) {
			slot = next_random(l) % l->io_slots;
		} else {
			slot = l->next_slot;
			l->next_slot = (l->next_slot + 1) % l->io_slots;
		}
		uint64_t lba = slot * l->io_blocks;
		uint32_t bytes = l->io_blocks * l->block_size;

		if (l->write)
			task = iscsi_write16_task(l->iscsi, l->lun, lba, l->write_data, bytes,
						  (int)l->block_size, 0, 0, 0, 0, 0, completed, l);
		else
			task = iscsi_read16_task(l->iscsi, l->lun, lba, bytes, (int)l->block_size,
						 0, 0, 0, 0, 0, completed, l);
		if (task == NULL) {
			fprintf(stderr, "iscsi-load: could not queue a command: %s\n",
				iscsi_get_error(l->iscsi));
			l->failed = 1;
			l->stopping = 1;
			return;
		}
		l->in_flight++;
	}
}

static void usage(void)
{
	fprintf(stderr,
		"usage: iscsi-load [-w] [-R] [-s BYTES] [-q DEPTH] [-t SECONDS] [-i INITIATOR] "
		"iscsi://HOST:PORT/IQN/LUN\n"
		"  -w  write (WRITE16) instead of read (READ16)\n"
		"  -R  random offsets (aligned to the I/O size) instead of sequential\n"
		"  -s  bytes per command (default 4096; a multiple of the LUN's block size)\n"
		"  -q  commands kept in flight (default 32)\n"
		"  -t  seconds to run (default 10)\n");
	exit(2);
}

static long parse_positive(const char *what, const char *text)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(text, &end, 10);
	if (errno != 0 || *end != '\0' || v <= 0) {
		fprintf(stderr, "iscsi-load: %s must be a positive integer, not '%s'\n", what, text);
		exit(2);
	}
	return v;
}

static int connect_lun(struct load *l, const char *initiator, const char *url_text)
{
	struct iscsi_url *url;
	struct scsi_task *task;
	struct scsi_readcapacity16 *cap;

	l->iscsi = iscsi_create_context(initiator);
	if (l->iscsi == NULL) {
		fprintf(stderr, "iscsi-load: cannot create a libiscsi context\n");
		return -1;
	}
	url = iscsi_parse_full_url(l->iscsi, url_text);
	if (url == NULL) {
		fprintf(stderr, "iscsi-load: bad URL %s: %s\n", url_text, iscsi_get_error(l->iscsi));
		return -1;
	}
	iscsi_set_targetname(l->iscsi, url->target);
	iscsi_set_session_type(l->iscsi, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(l->iscsi, ISCSI_HEADER_DIGEST_NONE);
	if (iscsi_full_connect_sync(l->iscsi, url->portal, url->lun) != 0) {
		fprintf(stderr, "iscsi-load: login to %s failed: %s\n", url_text,
			iscsi_get_error(l->iscsi));
		iscsi_destroy_url(url);
		return -1;
	}
	l->lun = url->lun;
	iscsi_destroy_url(url);
	/* A dropped connection must end the run, not be hidden by a reconnect. */
	iscsi_set_noautoreconnect(l->iscsi, 1);

	task = iscsi_readcapacity16_sync(l->iscsi, l->lun);
	if (task == NULL || task->status != SCSI_STATUS_GOOD) {
		fprintf(stderr, "iscsi-load: READ CAPACITY(16) failed: %s\n",
			iscsi_get_error(l->iscsi));
		return -1;
	}
	cap = scsi_datain_unmarshall(task);
	if (cap == NULL) {
		fprintf(stderr, "iscsi-load: cannot parse the READ CAPACITY(16) data\n");
		return -1;
	}
	l->block_size = cap->block_length;
	l->num_blocks = cap->returned_lba + 1;
	scsi_free_scsi_task(task);
	return 0;
}

int main(int argc, char **argv)
{
	struct load l = { .depth = 32 };
	const char *initiator = "iqn.2026-11.io.iser-target:iscsi-load";
	long io_bytes = 4096, seconds = 10;
	int c;

	while ((c = getopt(argc, argv, "wRs:q:t:i:")) != -1) {
		switch (c) {
		case 'w': l.write = 1; break;
		case 'R': l.random = 1; break;
		case 's': io_bytes = parse_positive("-s", optarg); break;
		case 'q': l.depth = (int)parse_positive("-q", optarg); break;
		case 't': seconds = parse_positive("-t", optarg); break;
		case 'i': initiator = optarg; break;
		default: usage();
		}
	}
	if (optind != argc - 1)
		usage();
	if (connect_lun(&l, initiator, argv[optind]) != 0)
		return 1;
	if (io_bytes % l.block_size != 0 || (uint64_t)io_bytes > l.num_blocks * l.block_size) {
		fprintf(stderr, "iscsi-load: -s %ld is not a multiple of the block size %" PRIu32
			" or exceeds the LUN\n", io_bytes, l.block_size);
		return 2;
	}
	l.io_blocks = (uint32_t)(io_bytes / l.block_size);
	l.io_slots = l.num_blocks / l.io_blocks;
	l.rng = 0x9E3779B97F4A7C15ULL ^ (uint64_t)time(NULL);
	if (l.write) {
		l.write_data = malloc((size_t)io_bytes);
		if (l.write_data == NULL) {
			fprintf(stderr, "iscsi-load: out of memory\n");
			return 1;
		}
		for (long i = 0; i < io_bytes; i++)
			l.write_data[i] = (unsigned char)(i * 7 + 1);
	}

	double start = now_s(), deadline = start + (double)seconds;
	issue(&l);
	while (l.in_flight > 0) {
		struct pollfd pfd = {
			.fd = iscsi_get_fd(l.iscsi),
			.events = (short)iscsi_which_events(l.iscsi),
		};
		int remaining_ms = (int)((deadline - now_s()) * 1000.0);

		if (poll(&pfd, 1, remaining_ms > 0 ? remaining_ms : 100) < 0) {
			if (errno == EINTR)
				continue;
			perror("iscsi-load: poll");
			return 1;
		}
		if (iscsi_service(l.iscsi, pfd.revents) < 0) {
			fprintf(stderr, "iscsi-load: connection failed: %s\n", iscsi_get_error(l.iscsi));
			return 1;
		}
		if (now_s() >= deadline)
			l.stopping = 1;
	}
	double elapsed = now_s() - start;

	if (l.failed)
		return 1;
	iscsi_logout_sync(l.iscsi);
	iscsi_destroy_context(l.iscsi);
	free(l.write_data);
	printf("ios=%" PRIu64 " seconds=%.3f iops=%.0f mib_s=%.1f\n", l.completed, elapsed,
	       (double)l.completed / elapsed,
	       (double)l.completed * (double)io_bytes / elapsed / 1048576.0);
	return 0;
}
