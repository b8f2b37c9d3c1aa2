/* Vector table, reset handler, semihosting and SysTick wrap counter (see hw_harness.h). */
#include "hw_harness.h"

extern uint32_t __hw_bss_start, __hw_bss_end, __hw_stack_top;
extern int main(void);

volatile uint32_t hw_wraps;

static int hw_semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void hw_puts(const char *s) { hw_semihost(0x04, s); } /* SYS_WRITE0 */

void hw_exit(int code)
{
    /* SYS_EXIT: ADP_Stopped_ApplicationExit (QEMU exit status 0) or RunTimeErrorUnknown (1) */
    hw_semihost(0x18, (const void *)(code == 0 ? 0x20026u : 0x20023u));
    for (;;) {
    }
}

int hw_write_file(const char *path, const void *data, uint32_t n)
{
    uint32_t len = 0;
    while (path[len])
        ++len;
    const uint32_t open_args[3] = {(uint32_t)path, 5u /* "wb" */, len};
    const int fd = hw_semihost(0x01, open_args);
    if (fd < 0)
        return -1;
    const uint32_t write_args[3] = {(uint32_t)fd, (uint32_t)data, n};
    const int left = hw_semihost(0x05, write_args);
    const uint32_t close_args[1] = {(uint32_t)fd};
    hw_semihost(0x02, close_args);
    return left == 0 ? 0 : -1;
}

void hw_timer_start(void)
{
    hw_wraps = 0;
    HW_SYST_CSR = 0;
    HW_SYST_RVR = 0x00FFFFFFu;
    HW_SYST_CVR = 0;
    HW_SYST_CSR = 7u; /* processor clock, interrupt on wrap, enable */
    for (volatile int i = 0; i < 4; ++i) {
    }
}

/* Exactly 5 instructions per wrap (subtracted by the host). */
__attribute__((naked)) void SysTick_Handler(void)
{
    __asm__ volatile("ldr r0, =hw_wraps\n"
                     "ldr r1, [r0]\n"
                     "adds r1, r1, #1\n"
                     "str r1, [r0]\n"
                     "bx lr\n"
                     ".ltorg\n");
}

void Fault_Handler(void)
{
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    char msg[] = "HWFAULT exception 00\n";
    msg[18] = (char)('0' + (ipsr / 10) % 10);
    msg[19] = (char)('0' + ipsr % 10);
    hw_puts(msg);
    hw_exit(1);
}

void Reset_Handler(void)
{
    for (uint32_t *p = &__hw_bss_start; p < &__hw_bss_end; ++p)
        *p = 0;
#if defined(__ARM_FP)
    /* CPACR: full access to CP10/CP11 (the FPU) before any floating-point instruction */
    *(volatile uint32_t *)0xE000ED88u |= (0xFu << 20);
    __asm__ volatile("dsb\n isb" ::: "memory");
#endif
    hw_exit(main());
}

typedef void (*hw_vector_t)(void);
__attribute__((section(".hw_vectors"), used)) static const hw_vector_t hw_vectors[16] = {
    (hw_vector_t)&__hw_stack_top, Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, 0, 0, 0, 0, Fault_Handler, Fault_Handler, 0, Fault_Handler,
    SysTick_Handler,
};
