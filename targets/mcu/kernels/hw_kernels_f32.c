/* fp32 kernels: single-precision accumulation (FPv4-SP / FPv5 VFMA), clamp epilogue. */
#include "hw_kernels.h"

static inline float hw_clamp_f32(float acc, const hw_epi_t *e)
{
    acc = acc < e->f_min ? e->f_min : acc;
    return acc > e->f_max ? e->f_max : acc;
}

#define T float
#define ACC float
#define SFX f32
#define EPI(acc, ch) ((void)(ch), hw_clamp_f32((acc), e))
#define HW_TMPL_DENSE 1
#include "hw_kernels_tmpl.h"

static void hw_mv_dense_any_f32(const hw_mat_t *W, const float *x, float *y, const float *bias,
                                const hw_epi_t *e, uint32_t ch0)
{
    hw_mv_dense_f32(W, x, y, bias, e, ch0);
}
