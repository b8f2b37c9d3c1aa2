/*
 * Glue between the layer kernels of an exported graph (targets.mcu.codegen.export_graph):
 * residual add, global mean pooling and a standalone ReLU, int8 and fp32.
 *
 * Layouts are those of hw_kernels.h: channels-last activations ([H][W][C], [L][C]); a pooled
 * result is a [C] vector. int8 tensors are symmetric (zero point 0) with one scale per tensor.
 *
 * int8 arithmetic (the host reference in targets/mcu/_graph.py mirrors it bit for bit)
 *   add    y = clamp((a * ma + b * mb + 2^15) >> 16, act_min, act_max)
 *          ma = round(s_a / s_y * 2^16), mb = round(s_b / s_y * 2^16), both < 2^22 (int32 math)
 *   mean   acc = sum over the pixels of one channel (int32)
 *          y = clamp((acc * mult + 2^(shift-1)) >> shift, act_min, act_max)   (64-bit product)
 *          mult * 2^-shift = s_x / (pixels * s_y), mult < 2^31, shift in 1..62
 *   relu   y = max(x, 0) (the scale is kept)
 * Right shifts of negative numbers are arithmetic (floor), as gcc does for signed types.
 * Every function may run in place (y == a, y == x) for elementwise ops.
 */
#ifndef HW_OPS_H
#define HW_OPS_H
#include <stdint.h>

void hw_add_s8(const int8_t *a, const int8_t *b, int8_t *y, uint32_t n, int32_t ma, int32_t mb,
               int32_t act_min, int32_t act_max);
void hw_mean_s8(const int8_t *x, int8_t *y, uint32_t pixels, uint32_t channels, int32_t mult,
                int32_t shift, int32_t act_min, int32_t act_max);
void hw_relu_s8(const int8_t *x, int8_t *y, uint32_t n);

void hw_add_f32(const float *a, const float *b, float *y, uint32_t n, float f_min, float f_max);
/* y[c] = (sum over pixels of x[p][c]) * (1 / pixels), clamped */
void hw_mean_f32(const float *x, float *y, uint32_t pixels, uint32_t channels, float f_min, float f_max);
void hw_relu_f32(const float *x, float *y, uint32_t n);

#endif
