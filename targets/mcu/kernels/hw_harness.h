/*
 * Bare-metal harness for QEMU mps2-an386 / mps2-an500: startup, semihosting, and an
 * instruction counter built on SysTick.
 *
 * Under `qemu-system-arm -icount shift=S` every instruction advances virtual time by 2^S ns and
 * SysTick (processor clock, 25 MHz on MPS2 in QEMU) ticks every 40 ns, so with S = 7 one
 * instruction is exactly 3.2 ticks and instructions = round(ticks * 40 / 2^S). The 24-bit
 * counter wraps every 2^24 ticks; the SysTick handler (5 instructions) counts the wraps.
 */
#ifndef HW_HARNESS_H
#define HW_HARNESS_H
#include <stdint.h>

extern volatile uint32_t hw_wraps;

#define HW_SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define HW_SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define HW_SYST_CVR (*(volatile uint32_t *)0xE000E018u)

/* One timestamp: wraps and the current counter value, re-read if a wrap came in between. */
#define HW_STAMP(w, v)                                                         \
    do {                                                                       \
        uint32_t _w2;                                                          \
        do {                                                                   \
            (w) = hw_wraps;                                                    \
            (v) = HW_SYST_CVR;                                                 \
            _w2 = hw_wraps;                                                    \
        } while ((w) != _w2);                                                  \
    } while (0)

void hw_timer_start(void);
/* Semihosting: write n bytes to a new host file (relative to QEMU's working directory). */
int hw_write_file(const char *path, const void *data, uint32_t n);
void hw_puts(const char *s);
void hw_exit(int code) __attribute__((noreturn));

typedef struct {
    uint32_t magic;      /* 'HWR1' */
    int32_t status;      /* kernel return value */
    uint32_t stamps[6];  /* (wraps, value) x 3: before calibration, before kernel, after */
    uint32_t out_bytes;
} hw_result_t;

#define HW_RESULT_MAGIC 0x31525748u

/* Measure `call` (a statement), then write hw_result.bin = header + out[0..out_bytes). */
#define HW_MEASURE_AND_REPORT(call, out, out_bytes_)                           \
    do {                                                                       \
        hw_result_t _r;                                                        \
        _r.magic = HW_RESULT_MAGIC;                                            \
        hw_timer_start();                                                      \
        HW_STAMP(_r.stamps[0], _r.stamps[1]);                                  \
        HW_STAMP(_r.stamps[2], _r.stamps[3]);                                  \
        _r.status = (call);                                                    \
        HW_STAMP(_r.stamps[4], _r.stamps[5]);                                  \
        _r.out_bytes = (out_bytes_);                                           \
        if (hw_write_file("hw_result.bin", &_r, sizeof _r) != 0) hw_exit(2);   \
        if (hw_write_file("hw_output.bin", (out), (out_bytes_)) != 0) hw_exit(2); \
    } while (0)

#endif
