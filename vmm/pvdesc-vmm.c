/*
 * pvdesc-vmm: the smallest VMM that asks real KVM (arm64) what it does with pvdesc's outputs.
 *
 * It is a reference for VMM developers as much as a test tool: every step a VMM needs to
 * honour a pvdesc build is here, in order, with the KVM API call that does it.
 *
 *   pvdesc-vmm probe CONFIG   for every possible vCPU: run a bare-metal payload that asks KVM
 *                             SMCCC_VERSION, SMCCC_ARCH_FEATURES(PV_TIME_FEATURES),
 *                             PV_TIME_FEATURES(PV_TIME_ST) and PV_TIME_ST, and read back the
 *                             64-byte structure KVM wrote at the address it reported.
 *   pvdesc-vmm linux CONFIG   boot an arm64 Linux Image with the online vCPUs (one thread
 *                             each, secondaries started by the guest through in-kernel PSCI),
 *                             an in-kernel vGICv3, the arch timer and a transmit-only 8250
 *                             UART; at the guest's power-off, print each vCPU's structure.
 *
 * CONFIG is a text file written by pvdesc (pvdesc/commands/prove/kvm.py) from NAME.hypervisor.json, one
 * "key value..." line each (numbers in C syntax):
 *
 *   ipa_bits N                       the guest's IPA size (KVM_VM_TYPE_ARM_IPA_SIZE)
 *   memslot SLOT GPA SIZE PURPOSE    one per memslot of NAME.hypervisor.json (ram|stolen-time)
 *   vcpus N                          possible vCPUs: ids 0..N-1
 *   ipa ID IPA                       vCPU ID's KVM_ARM_VCPU_PVTIME_IPA (no line: left unset)
 *   payload GPA                      probe: a RAM page, clear of the region, for the payload
 *   report GPA                       probe: an address outside every memslot; the payload's
 *                                    stores there come back to us as KVM_EXIT_MMIO
 *   online N                         linux: vCPUs 0..N-1 are created (and listed in the DTB)
 *   kernel|initrd|dtb GPA PATH       linux: load PATH at GPA (the kernel: 2 MiB-aligned base
 *                                    + text_offset, arm64 booting.rst); x0 = the DTB's GPA
 *   uart GPA                         linux: the 8250 the guest's earlycon writes to
 *   gic DIST REDIST                  linux: the vGICv3 distributor and redistributors
 *   timeout SECONDS                  linux: give up on a guest that has not powered off
 *
 * Built with -DPVDESC_HEADER='"NAME.h"' -DHDR_PREFIX=PVDESC_NAME -DHDR_LOWER=pvdesc_name, it
 * takes the memslots and IPAs from the C header pvdesc generated for the generic-kvm profile
 * instead, and refuses to run unless the header and CONFIG agree exactly: the header itself
 * then configures the VM.
 *
 * Output: lines starting "pvdesc-vmm: " on stdout; exit 0 when every vCPU answered, 1 on a
 * KVM or config error ("pvdesc-vmm: error: ..."), 3 when the host lacks KVM or stolen time.
 *
 * Linux uapi: <linux/kvm.h>, Documentation/virt/kvm/api.rst, devices/vcpu.rst (PVTIME_CTRL),
 * arm/pvtime.rst and Arm DEN0057A (the hypercalls), arch/arm64/kvm/pvtime.c (what KVM writes).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <linux/kvm.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#ifdef PVDESC_HEADER
#include PVDESC_HEADER
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define H_NR_MEMSLOTS CAT(HDR_PREFIX, _NR_MEMSLOTS)
#define H_MAX_VCPUS CAT(HDR_PREFIX, _MAX_VCPUS)
#define H_IPA_BITS CAT(HDR_PREFIX, _IPA_BITS)
#define H_MEMSLOTS CAT(HDR_LOWER, _memslots)
#define H_IPAS CAT(HDR_LOWER, _pvtime_ipas)
#endif

/* SMCCC function IDs (include/linux/arm-smccc.h; Arm DEN0057A for the PV time calls). */
#define SMCCC_VERSION 0x80000000u
#define SMCCC_ARCH_FEATURES 0x80000001u
#define PV_TIME_FEATURES 0xC5000020u
#define PV_TIME_ST 0xC5000021u

#define MAX_MEMSLOTS 64
#define MAX_VCPUS 512
#define PVTIME_SIZE 64 /* struct pvclock_vcpu_stolen_time, 64-byte aligned */
#define POISON 0xA5    /* fills each structure before the run: KVM's zeros must replace it */
#define NO_IPA UINT64_MAX

struct memslot {
	uint32_t slot;
	uint64_t gpa, size;
	int stolen_time; /* 1: the region's own slot */
	uint8_t *host;   /* our mapping of it */
};

struct config {
	unsigned ipa_bits, nr_slots, nr_vcpus;
	struct memslot slots[MAX_MEMSLOTS];
	uint64_t ipa[MAX_VCPUS]; /* NO_IPA: leave KVM_ARM_VCPU_PVTIME_IPA unset */
	uint64_t payload, report;
	/* linux mode */
	unsigned online, timeout;
	uint64_t kernel, initrd, dtb, uart, gic_dist, gic_redist;
	char kernel_path[128], initrd_path[128], dtb_path[128];
};

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("pvdesc-vmm: error: ", stdout);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	exit(1);
}

/* ioctl or die, naming the call and errno. */
static long xioctl(int fd, unsigned long req, void *arg, const char *what)
{
	long r = ioctl(fd, req, arg);
	if (r < 0)
		die("%s: %s", what, strerror(errno));
	return r;
}

/* --- the configuration -------------------------------------------------------------- */

static void read_config(const char *path, struct config *c)
{
	FILE *f = fopen(path, "r");
	char line[256], key[32], purpose[32];
	unsigned long long a, b, d;
	unsigned lineno = 0;

	if (!f)
		die("%s: %s", path, strerror(errno));
	memset(c, 0, sizeof(*c));
	for (unsigned i = 0; i < MAX_VCPUS; i++)
		c->ipa[i] = NO_IPA;
	c->payload = c->report = NO_IPA;
	while (fgets(line, sizeof(line), f)) {
		lineno++;
		if (line[0] == '#' || line[0] == '\n' || sscanf(line, "%31s", key) != 1)
			continue;
		if (!strcmp(key, "ipa_bits") && sscanf(line, "%*s %llu", &a) == 1) {
			c->ipa_bits = (unsigned)a;
		} else if (!strcmp(key, "memslot") &&
			   sscanf(line, "%*s %llu %lli %lli %31s", &a, &b, &d, purpose) == 4 &&
			   c->nr_slots < MAX_MEMSLOTS) {
			struct memslot *s = &c->slots[c->nr_slots++];
			s->slot = (uint32_t)a;
			s->gpa = b;
			s->size = d;
			s->stolen_time = !strcmp(purpose, "stolen-time");
		} else if (!strcmp(key, "vcpus") && sscanf(line, "%*s %llu", &a) == 1 && a >= 1 &&
			   a <= MAX_VCPUS) {
			c->nr_vcpus = (unsigned)a;
		} else if (!strcmp(key, "ipa") && sscanf(line, "%*s %llu %lli", &a, &b) == 2 &&
			   a < MAX_VCPUS) {
			c->ipa[a] = b;
		} else if (!strcmp(key, "payload") && sscanf(line, "%*s %lli", &a) == 1) {
			c->payload = a;
		} else if (!strcmp(key, "report") && sscanf(line, "%*s %lli", &a) == 1) {
			c->report = a;
		} else if (!strcmp(key, "online") && sscanf(line, "%*s %llu", &a) == 1 && a >= 1 &&
			   a <= MAX_VCPUS) {
			c->online = (unsigned)a;
		} else if (!strcmp(key, "timeout") && sscanf(line, "%*s %llu", &a) == 1) {
			c->timeout = (unsigned)a;
		} else if (!strcmp(key, "kernel") && sscanf(line, "%*s %lli %127s", &a, c->kernel_path) == 2) {
			c->kernel = a;
		} else if (!strcmp(key, "initrd") && sscanf(line, "%*s %lli %127s", &a, c->initrd_path) == 2) {
			c->initrd = a;
		} else if (!strcmp(key, "dtb") && sscanf(line, "%*s %lli %127s", &a, c->dtb_path) == 2) {
			c->dtb = a;
		} else if (!strcmp(key, "uart") && sscanf(line, "%*s %lli", &a) == 1) {
			c->uart = a;
		} else if (!strcmp(key, "gic") && sscanf(line, "%*s %lli %lli", &a, &b) == 2) {
			c->gic_dist = a;
			c->gic_redist = b;
		} else {
			die("%s:%u: cannot read this line", path, lineno);
		}
	}
	fclose(f);
	if (!c->ipa_bits || !c->nr_slots || !c->nr_vcpus)
		die("%s: needs ipa_bits, memslot and vcpus lines", path);
}

#ifdef PVDESC_HEADER
/* Take the memslots and IPAs from the generated header, after checking it says what the
 * config (from NAME.hypervisor.json) says: the two outputs of one build must agree. */
static void use_header(struct config *c)
{
	if (H_NR_MEMSLOTS != c->nr_slots || H_MAX_VCPUS != c->nr_vcpus || H_IPA_BITS != c->ipa_bits)
		die("header %s: %u memslots, %u vCPUs, %u IPA bits; config: %u, %u, %u", PVDESC_HEADER,
		    (unsigned)H_NR_MEMSLOTS, (unsigned)H_MAX_VCPUS, (unsigned)H_IPA_BITS, c->nr_slots,
		    c->nr_vcpus, c->ipa_bits);
	for (unsigned i = 0; i < H_NR_MEMSLOTS; i++) {
		struct memslot *s = &c->slots[i];
		if (H_MEMSLOTS[i].slot != s->slot || H_MEMSLOTS[i].guest_phys_addr != s->gpa ||
		    H_MEMSLOTS[i].memory_size != s->size ||
		    !!H_MEMSLOTS[i].is_stolen_time != s->stolen_time)
			die("header %s: memslot %u differs from the config", PVDESC_HEADER, i);
		s->slot = H_MEMSLOTS[i].slot;
		s->gpa = H_MEMSLOTS[i].guest_phys_addr;
		s->size = H_MEMSLOTS[i].memory_size;
	}
	for (unsigned i = 0; i < H_MAX_VCPUS; i++) {
		if (H_IPAS[i] != c->ipa[i])
			die("header %s: vCPU %u IPA %#" PRIx64 ", config %#" PRIx64, PVDESC_HEADER, i,
			    (uint64_t)H_IPAS[i], c->ipa[i]);
		c->ipa[i] = H_IPAS[i];
	}
	printf("pvdesc-vmm: header %s agrees with the config: %u memslots, %u vCPUs; "
	       "configuring from the header\n",
	       PVDESC_HEADER, c->nr_slots, c->nr_vcpus);
}
#endif

/* Our mapping of guest address gpa..gpa+len, or NULL when no memslot holds all of it. */
static uint8_t *host_addr(const struct config *c, uint64_t gpa, uint64_t len)
{
	for (unsigned i = 0; i < c->nr_slots; i++) {
		const struct memslot *s = &c->slots[i];
		if (gpa >= s->gpa && gpa - s->gpa <= s->size && len <= s->size - (gpa - s->gpa))
			return s->host + (gpa - s->gpa);
	}
	return NULL;
}

/* --- the VM --------------------------------------------------------------------------- */

static int kvm_fd;

/* Open /dev/kvm and check what pvdesc relies on; exit 3 (no result) when the host lacks it. */
static void open_kvm(const struct config *c)
{
	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0) {
		printf("pvdesc-vmm: no-kvm: /dev/kvm: %s\n", strerror(errno));
		exit(3);
	}
	int api = ioctl(kvm_fd, KVM_GET_API_VERSION, 0);
	int steal = ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_STEAL_TIME);
	int ipa_max = ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_ARM_VM_IPA_SIZE);
	int max_vcpus = ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
	printf("pvdesc-vmm: kvm api %d steal_time %d ipa_size %d max_vcpus %d\n", api, steal,
	       ipa_max, max_vcpus);
	if (steal <= 0) {
		printf("pvdesc-vmm: no-kvm: KVM_CHECK_EXTENSION(KVM_CAP_STEAL_TIME) = %d\n", steal);
		exit(3);
	}
	if (ipa_max > 0 && c->ipa_bits > (unsigned)ipa_max) {
		printf("pvdesc-vmm: no-kvm: the VM needs %u IPA bits, KVM_CAP_ARM_VM_IPA_SIZE is %d\n",
		       c->ipa_bits, ipa_max);
		exit(3);
	}
}

/* KVM_CREATE_VM with the IPA size, then one KVM_SET_USER_MEMORY_REGION per memslot.  The
 * memory is reserved address space only (MAP_NORESERVE): pages exist once touched. */
static int create_vm(struct config *c)
{
	void *type = (void *)(uintptr_t)KVM_VM_TYPE_ARM_IPA_SIZE(c->ipa_bits);
	int vm = (int)xioctl(kvm_fd, KVM_CREATE_VM, type, "KVM_CREATE_VM");
	for (unsigned i = 0; i < c->nr_slots; i++) {
		struct memslot *s = &c->slots[i];
		if (!s->host) {
			void *p = mmap(NULL, s->size, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
			if (p == MAP_FAILED)
				die("mmap memslot %u (%#" PRIx64 " bytes): %s", s->slot, s->size,
				    strerror(errno));
			s->host = p;
		}
		struct kvm_userspace_memory_region r = {
			.slot = s->slot,
			.guest_phys_addr = s->gpa,
			.memory_size = s->size,
			.userspace_addr = (uintptr_t)s->host,
		};
		char what[64];
		snprintf(what, sizeof(what), "KVM_SET_USER_MEMORY_REGION slot %u", s->slot);
		xioctl(vm, KVM_SET_USER_MEMORY_REGION, &r, what);
	}
	return vm;
}

/* KVM_CREATE_VCPU, KVM_ARM_VCPU_INIT (with `features`), then the vCPU's stolen-time IPA:
 * KVM_SET_DEVICE_ATTR on the vCPU fd, group KVM_ARM_VCPU_PVTIME_CTRL, attribute
 * KVM_ARM_VCPU_PVTIME_IPA, addr pointing at the 64-bit IPA (devices/vcpu.rst section 3). */
static int create_vcpu(int vm, unsigned id, uint32_t features, uint64_t ipa)
{
	char what[80];
	snprintf(what, sizeof(what), "KVM_CREATE_VCPU %u", id);
	int fd = (int)xioctl(vm, KVM_CREATE_VCPU, (void *)(uintptr_t)id, what);
	struct kvm_vcpu_init init;
	xioctl(vm, KVM_ARM_PREFERRED_TARGET, &init, "KVM_ARM_PREFERRED_TARGET");
	init.features[0] |= features;
	snprintf(what, sizeof(what), "KVM_ARM_VCPU_INIT %u", id);
	xioctl(fd, KVM_ARM_VCPU_INIT, &init, what);
	if (ipa != NO_IPA) {
		struct kvm_device_attr attr = {
			.group = KVM_ARM_VCPU_PVTIME_CTRL,
			.attr = KVM_ARM_VCPU_PVTIME_IPA,
			.addr = (uintptr_t)&ipa,
		};
		snprintf(what, sizeof(what), "KVM_SET_DEVICE_ATTR(PVTIME_IPA %#" PRIx64 ") vCPU %u", ipa, id);
		xioctl(fd, KVM_SET_DEVICE_ATTR, &attr, what);
	}
	return fd;
}

/* A core register id for KVM_SET_ONE_REG (arch/arm64/include/uapi/asm/kvm.h). */
#define CORE_REG(field) \
	(KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offsetof(struct kvm_regs, field) / 4))

static void set_reg(int vcpu, uint64_t id, uint64_t value)
{
	struct kvm_one_reg reg = {.id = id, .addr = (uintptr_t)&value};
	xioctl(vcpu, KVM_SET_ONE_REG, &reg, "KVM_SET_ONE_REG");
}

static struct kvm_run *map_run(int vcpu)
{
	long size = xioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, NULL, "KVM_GET_VCPU_MMAP_SIZE");
	void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (p == MAP_FAILED)
		die("mmap vCPU: %s", strerror(errno));
	return p;
}

/* --- probe: ask KVM on every vCPU ------------------------------------------------------ */

/*
 * The payload, entered at EL1 with the MMU off (so addresses are IPAs) and x9 = the report
 * address.  Each answer is stored to x9 + 8 * n: the address is in no memslot, so every store
 * exits to us as KVM_EXIT_MMIO with the value.  Position independent: copied to any RAM page.
 * The words are aarch64-linux-gnu-as's encodings of the assembly beside them (a test
 * assembles the comments and compares).
 */
static const uint32_t payload[] = {
	0x52b00000, /* mov w0, #0x80000000 */     // SMCCC_VERSION
	0xd4000002, /* hvc #0 */
	0xf9000120, /* str x0, [x9, #0] */
	0x52800020, /* mov w0, #0x1 */            // SMCCC_ARCH_FEATURES ...
	0x72b00000, /* movk w0, #0x8000, lsl #16 */
	0x52800401, /* mov w1, #0x20 */           // ... (PV_TIME_FEATURES)
	0x72b8a001, /* movk w1, #0xc500, lsl #16 */
	0xd4000002, /* hvc #0 */
	0xf9000520, /* str x0, [x9, #8] */
	0x52800400, /* mov w0, #0x20 */           // PV_TIME_FEATURES ...
	0x72b8a000, /* movk w0, #0xc500, lsl #16 */
	0x52800421, /* mov w1, #0x21 */           // ... (PV_TIME_ST): 0 supported, -1 not
	0x72b8a001, /* movk w1, #0xc500, lsl #16 */
	0xd4000002, /* hvc #0 */
	0xf9000920, /* str x0, [x9, #16] */
	0x52800420, /* mov w0, #0x21 */           // PV_TIME_ST: the structure's IPA, or -1
	0x72b8a000, /* movk w0, #0xc500, lsl #16 */
	0xd4000002, /* hvc #0 */
	0xf9000d20, /* str x0, [x9, #24] */
	0xf900113f, /* str xzr, [x9, #32] */      // done
	0xd503207f, /* 1: wfi */
	0x17ffffff, /* b 1b */
};

/* Every exception vector (VBAR_EL1 = payload page + 0x800, 16 entries of 0x80 bytes): report
 * ESR_EL1 and ELR_EL1 at x9 + 40 and x9 + 48, so a payload that faults says where and why. */
static const uint32_t trap[] = {
	0xd5385200, /* mrs x0, esr_el1 */
	0xf9001520, /* str x0, [x9, #40] */
	0xd5384020, /* mrs x0, elr_el1 */
	0xf9001920, /* str x0, [x9, #48] */
	0xd503207f, /* 2: wfi */
	0x17ffffff, /* b 2b */
};
#define VECTORS 0x800
#define SYS_VBAR_EL1 ARM64_SYS_REG(3, 0, 12, 0, 0)
#define SYS_ESR_EL1 ARM64_SYS_REG(3, 0, 5, 2, 0)
#define TRAP_ESR 40 /* offsets of the trap's stores in the report window */
#define TRAP_ELR 48

static uint64_t get_reg(int vcpu, uint64_t id)
{
	uint64_t value = 0;
	struct kvm_one_reg reg = {.id = id, .addr = (uintptr_t)&value};
	ioctl(vcpu, KVM_GET_ONE_REG, &reg);
	return value;
}

/* KVM_RUN with a watchdog: a payload that never exits again (say, it faults into a loop the
 * vectors cannot report) is interrupted by SIGALRM after 5 s, and reported with its PC. */
static void run_payload(int vcpu, unsigned id)
{
	alarm(5);
	int r = ioctl(vcpu, KVM_RUN, NULL);
	alarm(0);
	if (r < 0)
		die("KVM_RUN vCPU %u: %s (pc %#" PRIx64 ", ESR_EL1 %#" PRIx64 ")", id, strerror(errno),
		    get_reg(vcpu, CORE_REG(regs.pc)), get_reg(vcpu, SYS_ESR_EL1));
}

#define ANSWERS 4

static int probe(struct config *c)
{
	int vm = create_vm(c);
	uint8_t *code = host_addr(c, c->payload, sizeof(payload));
	if (!code || c->report == NO_IPA)
		die("payload %#" PRIx64 " is in no memslot, or no report address", c->payload);
	memcpy(code, payload, sizeof(payload));
	uint8_t *vectors = host_addr(c, c->payload + VECTORS, 16 * 0x80);
	if (!vectors)
		die("the payload page %#" PRIx64 " has no room for the vectors", c->payload);
	for (int v = 0; v < 16; v++)
		memcpy(vectors + 0x80 * v, trap, sizeof(trap));
	/* Poison every structure KVM is told about: what we read back must be KVM's writing. */
	for (unsigned i = 0; i < c->nr_vcpus; i++) {
		uint8_t *st = c->ipa[i] == NO_IPA ? NULL : host_addr(c, c->ipa[i], PVTIME_SIZE);
		if (st)
			memset(st, POISON, PVTIME_SIZE);
	}
	int max = ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
	printf("pvdesc-vmm: vm ipa_bits %u memslots %u vcpus %u (per VM: %d)\n", c->ipa_bits,
	       c->nr_slots, c->nr_vcpus, max);
	if (max > 0 && c->nr_vcpus > (unsigned)max)
		die("the VM holds %d vCPUs, the config has %u", max, c->nr_vcpus);
	/* One VM with every possible vCPU, each run until it stored its four answers. */
	for (unsigned id = 0; id < c->nr_vcpus; id++) {
		int vcpu = create_vcpu(vm, id, 1u << KVM_ARM_VCPU_PSCI_0_2, c->ipa[id]);
		struct kvm_run *run = map_run(vcpu);
		uint64_t answer[ANSWERS];
		int got = 0;
		set_reg(vcpu, CORE_REG(regs.pc), c->payload);
		set_reg(vcpu, CORE_REG(regs.regs[9]), c->report);
		set_reg(vcpu, SYS_VBAR_EL1, c->payload + VECTORS);
		for (int exits = 0; got <= ANSWERS; exits++) {
			if (exits > 16)
				die("vCPU %u: the payload did not finish", id);
			run_payload(vcpu, id);
			if (run->exit_reason == KVM_EXIT_MMIO && run->mmio.phys_addr == c->report + TRAP_ESR) {
				uint64_t esr, elr;
				memcpy(&esr, run->mmio.data, 8);
				run_payload(vcpu, id); /* the trap's second store: ELR_EL1 */
				memcpy(&elr, run->mmio.data, 8);
				die("vCPU %u: the payload took an exception: ESR_EL1 %#" PRIx64
				    " ELR_EL1 %#" PRIx64, id, esr, elr);
			}
			if (run->exit_reason != KVM_EXIT_MMIO || !run->mmio.is_write ||
			    run->mmio.phys_addr != c->report + 8u * (unsigned)got)
				die("vCPU %u: unexpected exit %u at %#llx", id, run->exit_reason,
				    (unsigned long long)run->mmio.phys_addr);
			if (got < ANSWERS)
				memcpy(&answer[got], run->mmio.data, 8);
			got++;
		}
		printf("pvdesc-vmm: vcpu %u ipa %#" PRIx64 " smccc_version %#" PRIx64
		       " arch_features %#" PRIx64 " pv_features %#" PRIx64 " pv_time_st %#" PRIx64,
		       id, c->ipa[id], answer[0], answer[1], answer[2], answer[3]);
		/* Read the structure back at the address KVM *reported* (pvclock-abi.h layout:
		 * le32 revision, le32 attributes, le64 stolen_time). */
		const uint8_t *st = host_addr(c, answer[3], PVTIME_SIZE);
		if (st) {
			uint32_t rev, attr;
			uint64_t stolen;
			memcpy(&rev, st, 4);
			memcpy(&attr, st + 4, 4);
			memcpy(&stolen, st + 8, 8);
			printf(" revision %#" PRIx32 " attributes %#" PRIx32 " stolen_time %" PRIu64, rev,
			       attr, stolen);
		}
		putchar('\n');
	}
	printf("pvdesc-vmm: done %u\n", c->nr_vcpus);
	return 0;
}


/* --- linux: boot a Linux guest ---------------------------------------------------------- */

/* Copy a file into guest memory at gpa; returns its size. */
static size_t load_file(const struct config *c, const char *path, uint64_t gpa)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		die("%s: %s", path, strerror(errno));
	fseek(f, 0, SEEK_END);
	long size = ftell(f);
	rewind(f);
	uint8_t *dst = size > 0 ? host_addr(c, gpa, (uint64_t)size) : NULL;
	if (!dst)
		die("%s (%ld bytes) does not fit in a memslot at %#" PRIx64, path, size, gpa);
	if (fread(dst, 1, (size_t)size, f) != (size_t)size)
		die("%s: short read", path);
	fclose(f);
	return (size_t)size;
}

/* The 8250 UART's registers (include/uapi/linux/serial_reg.h): writing THR (offset 0) sends a
 * character; LSR (offset 5) always says "transmitter empty" (THRE | TEMT), so the guest's
 * polling earlycon never waits.  No interrupts, no receive path. */
#define UART_SIZE 0x1000
#define UART_THR 0
#define UART_LSR 5
#define UART_LSR_EMPTY 0x60

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static char line_buf[512];
static size_t line_len;

/* The guest's console, one "guest: " line at a time (vCPU threads share the UART). */
static void uart_putc(char ch)
{
	pthread_mutex_lock(&out_lock);
	if (ch == '\n' || line_len == sizeof(line_buf) - 1) {
		printf("guest: %.*s\n", (int)line_len, line_buf);
		line_len = 0;
	}
	if (ch != '\n' && ch != '\r')
		line_buf[line_len++] = ch;
	pthread_mutex_unlock(&out_lock);
}

struct vcpu {
	unsigned id;
	int fd;
	struct kvm_run *run;
	pthread_t thread;
};

static const struct config *linux_cfg;
static struct vcpu vcpus[MAX_VCPUS];

/* The end of a Linux run (power-off, reset, crash or timeout): each vCPU's structure as KVM
 * left it, then exit.  stolen_time is the run delay KVM accounted to that vCPU, in ns. */
static void finish(const char *how)
{
	const struct config *c = linux_cfg;
	pthread_mutex_lock(&out_lock);
	if (line_len)
		printf("guest: %.*s\n", (int)line_len, line_buf);
	printf("pvdesc-vmm: guest %s\n", how);
	for (unsigned i = 0; i < c->online; i++) {
		const uint8_t *st = c->ipa[i] == NO_IPA ? NULL : host_addr(c, c->ipa[i], PVTIME_SIZE);
		uint32_t rev = 0, attr = 0;
		uint64_t stolen = 0;
		if (!st)
			continue;
		memcpy(&rev, st, 4);
		memcpy(&attr, st + 4, 4);
		memcpy(&stolen, st + 8, 8);
		printf("pvdesc-vmm: steal vcpu %u ipa %#" PRIx64 " revision %#" PRIx32
		       " attributes %#" PRIx32 " stolen_time %" PRIu64 "\n",
		       i, c->ipa[i], rev, attr, stolen);
	}
	fflush(stdout);
	_exit(0);
}

static void *vcpu_loop(void *arg)
{
	struct vcpu *v = arg;
	const struct config *c = linux_cfg;
	struct kvm_run *run = v->run;
	for (;;) {
		if (ioctl(v->fd, KVM_RUN, NULL) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("KVM_RUN vCPU %u: %s", v->id, strerror(errno));
		}
		switch (run->exit_reason) {
		case KVM_EXIT_MMIO: {
			uint64_t off = run->mmio.phys_addr - c->uart;
			if (run->mmio.phys_addr < c->uart || off >= UART_SIZE) {
				if (!run->mmio.is_write)
					memset(run->mmio.data, 0, sizeof(run->mmio.data));
				break; /* no device here: reads as zero, writes ignored */
			}
			if (run->mmio.is_write && off == UART_THR)
				uart_putc((char)run->mmio.data[0]);
			else if (!run->mmio.is_write) {
				memset(run->mmio.data, 0, sizeof(run->mmio.data));
				if (off == UART_LSR)
					run->mmio.data[0] = UART_LSR_EMPTY;
			}
			break;
		}
		case KVM_EXIT_SYSTEM_EVENT: /* PSCI SYSTEM_OFF / SYSTEM_RESET, handled in the kernel */
			switch (run->system_event.type) {
			case KVM_SYSTEM_EVENT_SHUTDOWN:
				finish("system-event shutdown");
				break;
			case KVM_SYSTEM_EVENT_RESET:
				finish("system-event reset");
				break;
			default:
				finish("system-event crash");
			}
			break;
		default:
			die("vCPU %u: unexpected exit %u", v->id, run->exit_reason);
		}
	}
	return NULL;
}

static int boot_linux(struct config *c)
{
	if (!c->online || !c->kernel_path[0] || !c->dtb_path[0] || !c->uart || !c->gic_dist)
		die("linux needs online, kernel, dtb, uart and gic lines");
	linux_cfg = c;
	int vm = create_vm(c);
	load_file(c, c->kernel_path, c->kernel);
	load_file(c, c->dtb_path, c->dtb);
	if (c->initrd_path[0])
		load_file(c, c->initrd_path, c->initrd);
	/* Every vCPU with PSCI 0.2; all but the boot vCPU start powered off and are brought up
	 * by the guest's PSCI CPU_ON, which KVM handles itself. */
	for (unsigned id = 0; id < c->online; id++) {
		uint32_t features = 1u << KVM_ARM_VCPU_PSCI_0_2;
		if (id)
			features |= 1u << KVM_ARM_VCPU_POWER_OFF;
		vcpus[id].id = id;
		vcpus[id].fd = create_vcpu(vm, id, features, c->ipa[id]);
		vcpus[id].run = map_run(vcpus[id].fd);
	}
	/* The in-kernel vGICv3, created after the vCPUs (it sizes its redistributors by them). */
	struct kvm_create_device gic = {.type = KVM_DEV_TYPE_ARM_VGIC_V3};
	xioctl(vm, KVM_CREATE_DEVICE, &gic, "KVM_CREATE_DEVICE(VGIC_V3)");
	uint64_t dist = c->gic_dist, redist = c->gic_redist;
	struct kvm_device_attr attr = {
		.group = KVM_DEV_ARM_VGIC_GRP_ADDR,
		.attr = KVM_VGIC_V3_ADDR_TYPE_DIST,
		.addr = (uintptr_t)&dist,
	};
	xioctl(gic.fd, KVM_SET_DEVICE_ATTR, &attr, "vGIC distributor address");
	attr.attr = KVM_VGIC_V3_ADDR_TYPE_REDIST;
	attr.addr = (uintptr_t)&redist;
	xioctl(gic.fd, KVM_SET_DEVICE_ATTR, &attr, "vGIC redistributor address");
	attr = (struct kvm_device_attr){
		.group = KVM_DEV_ARM_VGIC_GRP_CTRL,
		.attr = KVM_DEV_ARM_VGIC_CTRL_INIT,
	};
	xioctl(gic.fd, KVM_SET_DEVICE_ATTR, &attr, "KVM_DEV_ARM_VGIC_CTRL_INIT");
	/* arm64 booting.rst: PC = the Image's first byte, x0 = the DTB, x1..x3 = 0, MMU off. */
	set_reg(vcpus[0].fd, CORE_REG(regs.pc), c->kernel);
	set_reg(vcpus[0].fd, CORE_REG(regs.regs[0]), c->dtb);
	printf("pvdesc-vmm: linux %u vCPUs, kernel %#" PRIx64 ", dtb %#" PRIx64 ", initrd %#" PRIx64
	       "\n", c->online, c->kernel, c->dtb, c->initrd);
	for (unsigned id = 0; id < c->online; id++)
		if (pthread_create(&vcpus[id].thread, NULL, vcpu_loop, &vcpus[id]))
			die("pthread_create");
	sleep(c->timeout ? c->timeout : 120);
	char how[64];
	snprintf(how, sizeof(how), "timeout after %u s", c->timeout);
	finish(how);
	return 1;
}

static void on_alarm(int sig)
{
	(void)sig;
}

int main(int argc, char **argv)
{
	static struct config c;
	struct sigaction sa = {.sa_handler = on_alarm};
	sigaction(SIGALRM, &sa, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc != 3 || (strcmp(argv[1], "probe") && strcmp(argv[1], "linux")))
		die("usage: pvdesc-vmm probe|linux CONFIG");
	read_config(argv[2], &c);
#ifdef PVDESC_HEADER
	use_header(&c);
#endif
	open_kvm(&c);
	return strcmp(argv[1], "linux") ? probe(&c) : boot_linux(&c);
}
