/* int8 kernels: int32 accumulation, per-channel requantisation (see hw_kernels.h). */
#include "hw_kernels.h"
#include <arm_acle.h>

/* out = clamp(rshift_round(smmulr(acc, mult), shift) + out_zp): SMMULR is
 * (acc * mult + 2^31) >> 32, then a rounding (half up) arithmetic right shift by 0..31. */
static inline int8_t hw_rq_s8(int32_t acc, const hw_epi_t *e, uint32_t ch)
{
    int32_t hi;
    const int32_t s = e->shift[ch];
    __asm__("smmulr %0, %1, %2" : "=r"(hi) : "r"(acc), "r"(e->mult[ch]));
    int32_t r = ((hi + ((1 << s) >> 1)) >> s) + e->out_zp;
    r = r < e->act_min ? e->act_min : r;
    r = r > e->act_max ? e->act_max : r;
    return (int8_t)r;
}

static inline uint32_t hw_ld32(const int8_t *p)
{
    uint32_t v;
    __builtin_memcpy(&v, p, 4);
    return v;
}

/* sign-extend bytes 1 and 3 into two halfwords (bytes 0 and 2: __sxtb16) */
static inline uint32_t hw_sxtb16_ror8(uint32_t x)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

#define T int8_t
#define ACC int32_t
#define SFX s8
#define EPI(acc, ch) hw_rq_s8((acc), e, (ch))
#define HW_COPY_WORDS 1
#define HW_BLOCK_INNER(accr, wr, xb, bw)                                         \
    {                                                                            \
        uint32_t c = 0;                                                          \
        for (; c + 4u <= (bw); c += 4u) {                                        \
            const uint32_t xv = hw_ld32((xb) + c), wv = hw_ld32((wr) + c);       \
            (accr) = __smlad(__sxtb16(xv), __sxtb16(wv), (accr));                \
            (accr) = __smlad(hw_sxtb16_ror8(xv), hw_sxtb16_ror8(wv), (accr));    \
        }                                                                        \
        for (; c < (bw); ++c)                                                    \
            (accr) += (int32_t)(wr)[c] * (int32_t)(xb)[c];                       \
    }
/* 4x4 int8 blocks: one x word per block, four weight words, eight SMLADs. */
#define HW_B44_BODY(IT)                                                          \
    const int8_t *v = (const int8_t *)W->values;                                 \
    const IT *ci = (const IT *)W->idx;                                           \
    const uint32_t BR = W->rows >> 2;                                            \
    for (uint32_t br = 0; br < BR; ++br) {                                       \
        const uint32_t nb = hw_ptr_at_s8(W, br + 1) - hw_ptr_at_s8(W, br);       \
        int32_t a0 = bias[4u * br], a1 = bias[4u * br + 1u];                     \
        int32_t a2 = bias[4u * br + 2u], a3 = bias[4u * br + 3u];                \
        const IT *const ci_end = ci + nb;                                        \
        while (ci != ci_end) {                                                   \
            const uint32_t xv = hw_ld32(x + 4u * (uint32_t)(*ci++));             \
            const uint32_t xl = __sxtb16(xv), xh = hw_sxtb16_ror8(xv);           \
            uint32_t wv = hw_ld32(v);                                            \
            a0 = __smlad(xl, __sxtb16(wv), a0);                                  \
            a0 = __smlad(xh, hw_sxtb16_ror8(wv), a0);                            \
            wv = hw_ld32(v + 4);                                                 \
            a1 = __smlad(xl, __sxtb16(wv), a1);                                  \
            a1 = __smlad(xh, hw_sxtb16_ror8(wv), a1);                            \
            wv = hw_ld32(v + 8);                                                 \
            a2 = __smlad(xl, __sxtb16(wv), a2);                                  \
            a2 = __smlad(xh, hw_sxtb16_ror8(wv), a2);                            \
            wv = hw_ld32(v + 12);                                                \
            a3 = __smlad(xl, __sxtb16(wv), a3);                                  \
            a3 = __smlad(xh, hw_sxtb16_ror8(wv), a3);                            \
            v += 16;                                                             \
        }                                                                        \
        int8_t *yb = y + 4u * br;                                                \
        const uint32_t ch = ch0 + 4u * br;                                       \
        yb[0] = hw_rq_s8(a0, e, ch);                                             \
        yb[1] = hw_rq_s8(a1, e, ch + 1u);                                        \
        yb[2] = hw_rq_s8(a2, e, ch + 2u);                                        \
        yb[3] = hw_rq_s8(a3, e, ch + 3u);                                        \
    }

static inline uint32_t hw_ptr_at_s8(const hw_mat_t *W, uint32_t i);
/* noinline: a register allocation of their own keeps the two index widths equally fast */
__attribute__((noinline)) static void hw_mv_block44_idx8(const hw_mat_t *W, const int8_t *x, int8_t *y,
                                                         const int32_t *bias, const hw_epi_t *e, uint32_t ch0);
__attribute__((noinline)) static void hw_mv_block44_idx16(const hw_mat_t *W, const int8_t *x, int8_t *y,
                                                          const int32_t *bias, const hw_epi_t *e, uint32_t ch0);
static inline int hw_block_fast_s8(const hw_mat_t *W, const int8_t *x, int8_t *y, const int32_t *bias,
                                   const hw_epi_t *e, uint32_t ch0)
{
    if (W->bh != 4u || W->bw != 4u)
        return 0;
    if (W->idx_bytes == 1)
        hw_mv_block44_idx8(W, x, y, bias, e, ch0);
    else
        hw_mv_block44_idx16(W, x, y, bias, e, ch0);
    return 1;
}
#define HW_BLOCK_FAST(W, x, y, bias, e, ch0) hw_block_fast_s8(W, x, y, bias, e, ch0)

#define HW_BLOCK4_OK(bw) (((bw) & 3u) == 0u)
#define HW_BLOCK4_STEPW 4u
#define HW_BLOCK4_STEP(a0, a1, a2, a3, w, xb, c, bw)                             \
    {                                                                            \
        const uint32_t xv = hw_ld32((xb) + (c));                                 \
        const uint32_t xl = __sxtb16(xv), xh = hw_sxtb16_ror8(xv);               \
        uint32_t wv = hw_ld32((w) + (c));                                        \
        a0 = __smlad(xl, __sxtb16(wv), a0);                                      \
        a0 = __smlad(xh, hw_sxtb16_ror8(wv), a0);                                \
        wv = hw_ld32((w) + (bw) + (c));                                          \
        a1 = __smlad(xl, __sxtb16(wv), a1);                                      \
        a1 = __smlad(xh, hw_sxtb16_ror8(wv), a1);                                \
        wv = hw_ld32((w) + 2u * (bw) + (c));                                     \
        a2 = __smlad(xl, __sxtb16(wv), a2);                                      \
        a2 = __smlad(xh, hw_sxtb16_ror8(wv), a2);                                \
        wv = hw_ld32((w) + 3u * (bw) + (c));                                     \
        a3 = __smlad(xl, __sxtb16(wv), a3);                                      \
        a3 = __smlad(xh, hw_sxtb16_ror8(wv), a3);                                \
    }
#include "hw_kernels_tmpl.h"

static void hw_mv_block44_idx8(const hw_mat_t *W, const int8_t *x, int8_t *y, const int32_t *bias,
                               const hw_epi_t *e, uint32_t ch0)
{
    HW_B44_BODY(uint8_t)
}

static void hw_mv_block44_idx16(const hw_mat_t *W, const int8_t *x, int8_t *y, const int32_t *bias,
                                const hw_epi_t *e, uint32_t ch0)
{
    HW_B44_BODY(uint16_t)
}

/* Dense int8 matvec: two rows at a time, four columns per step with SMLAD (dual 16-bit MAC);
 * the x word is loaded and sign-extended once for both rows. */
static void hw_mv_dense_any_s8(const hw_mat_t *W, const int8_t *x, int8_t *y, const int32_t *bias,
                               const hw_epi_t *e, uint32_t ch0)
{
    const int8_t *w0 = (const int8_t *)W->values;
    const uint32_t K = W->cols, K4 = K >> 2, Kr = K & 3u;
    uint32_t n = 0;
    for (; n + 2u <= W->rows; n += 2u) {
        const int8_t *w1 = w0 + K;
        const int8_t *xp = x;
        int32_t a0 = bias[n], a1 = bias[n + 1];
        for (uint32_t k = K4; k != 0; --k) {
            const uint32_t xv = hw_ld32(xp);
            const uint32_t xl = __sxtb16(xv), xh = hw_sxtb16_ror8(xv);
            const uint32_t u = hw_ld32(w0), v = hw_ld32(w1);
            a0 = __smlad(xl, __sxtb16(u), a0);
            a0 = __smlad(xh, hw_sxtb16_ror8(u), a0);
            a1 = __smlad(xl, __sxtb16(v), a1);
            a1 = __smlad(xh, hw_sxtb16_ror8(v), a1);
            xp += 4;
            w0 += 4;
            w1 += 4;
        }
        for (uint32_t k = Kr; k != 0; --k) {
            a0 += (int32_t)(*w0++) * (int32_t)(*xp);
            a1 += (int32_t)(*w1++) * (int32_t)(*xp++);
        }
        y[n] = hw_rq_s8(a0, e, ch0 + n);
        y[n + 1] = hw_rq_s8(a1, e, ch0 + n + 1);
        w0 = w1;
    }
    if (n < W->rows) {
        const int8_t *xp = x;
        int32_t a0 = bias[n];
        for (uint32_t k = K4; k != 0; --k) {
            const uint32_t xv = hw_ld32(xp), u = hw_ld32(w0);
            a0 = __smlad(__sxtb16(xv), __sxtb16(u), a0);
            a0 = __smlad(hw_sxtb16_ror8(xv), hw_sxtb16_ror8(u), a0);
            xp += 4;
            w0 += 4;
        }
        for (uint32_t k = Kr; k != 0; --k)
            a0 += (int32_t)(*w0++) * (int32_t)(*xp++);
        y[n] = hw_rq_s8(a0, e, ch0 + n);
    }
}
