/* Glue ops of exported graphs (see hw_ops.h for the arithmetic). */
#include "hw_ops.h"

static inline int32_t hw_clamp_i32(int32_t v, int32_t lo, int32_t hi)
{
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

void hw_add_s8(const int8_t *a, const int8_t *b, int8_t *y, uint32_t n, int32_t ma, int32_t mb,
               int32_t act_min, int32_t act_max)
{
    for (uint32_t i = 0; i < n; ++i) {
        const int32_t acc = (int32_t)a[i] * ma + (int32_t)b[i] * mb;
        y[i] = (int8_t)hw_clamp_i32((acc + (1 << 15)) >> 16, act_min, act_max);
    }
}

void hw_mean_s8(const int8_t *x, int8_t *y, uint32_t pixels, uint32_t channels, int32_t mult,
                int32_t shift, int32_t act_min, int32_t act_max)
{
    const int64_t half = (int64_t)1 << (shift - 1);
    for (uint32_t c = 0; c < channels; ++c) {
        const int8_t *p = x + c;
        int32_t acc = 0;
        for (uint32_t k = pixels; k != 0; --k) {
            acc += *p;
            p += channels;
        }
        int64_t r = ((int64_t)acc * mult + half) >> shift;
        r = r < act_min ? act_min : r;
        y[c] = (int8_t)(r > act_max ? act_max : r);
    }
}

void hw_relu_s8(const int8_t *x, int8_t *y, uint32_t n)
{
    for (uint32_t i = 0; i < n; ++i)
        y[i] = x[i] < 0 ? 0 : x[i];
}

static inline float hw_clampf(float v, float lo, float hi)
{
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

void hw_add_f32(const float *a, const float *b, float *y, uint32_t n, float f_min, float f_max)
{
    for (uint32_t i = 0; i < n; ++i)
        y[i] = hw_clampf(a[i] + b[i], f_min, f_max);
}

void hw_mean_f32(const float *x, float *y, uint32_t pixels, uint32_t channels, float f_min, float f_max)
{
    const float inv = 1.0f / (float)pixels;
    for (uint32_t c = 0; c < channels; ++c) {
        const float *p = x + c;
        float acc = 0.0f;
        for (uint32_t k = pixels; k != 0; --k) {
            acc += *p;
            p += channels;
        }
        y[c] = hw_clampf(acc * inv, f_min, f_max);
    }
}

void hw_relu_f32(const float *x, float *y, uint32_t n)
{
    for (uint32_t i = 0; i < n; ++i)
        y[i] = x[i] < 0.0f ? 0.0f : x[i];
}
