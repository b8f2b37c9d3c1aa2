/*
 * hwsearch MCU kernels: dense and sparse int8 / fp32 layers for Cortex-M4/M7.
 *
 * Layouts
 *   activations  NHWC without the batch dimension (conv), [batch][features] (linear)
 *   weights      a 2-D matrix per group, rows = output channels, cols = reduction
 *                (linear: in_features; conv: kh, kw, in_ch_per_group with in_ch fastest;
 *                 depthwise: kh, kw of one channel), stored in one of the formats below.
 *
 * Weight formats (all arrays flat and contiguous, integers little endian)
 *   DENSE    values[rows*cols]
 *   CSR      values[nnz], col_idx[nnz] (u8 if cols <= 256 else u16),
 *            row_ptr[rows+1] (u16 if nnz < 65536 else u32)
 *   BITMASK  values[nnz], mask[ceil(rows*cols/32)] u32 words: the flattened matrix as one bit
 *            stream, element p at bit (31 - p%32) of word p/32 (MSB first; rows need not start
 *            on a word boundary)
 *   NM       values[rows*cols*n/m] (exactly n stored per group of m consecutive columns; a pruned
 *            slot beyond the nonzeros stores 0), meta[ceil(stored*b/8)] bytes with
 *            b = ceil(log2 m) bits per stored value: the index inside its group, LSB first, as one
 *            bit stream over the whole matrix
 *   BLOCK    values[kept_blocks*bh*bw] (row-major inside a block), col_idx[kept_blocks]
 *            (block column, u8 if cols/bw <= 256 else u16), row_ptr[rows/bh+1]
 *            (u16 if kept_blocks < 65536 else u32)
 *
 * int8 arithmetic: int8 x int8 products accumulated in int32 with an int32 bias, then
 *   hi  = ((int64)acc * mult[c] + 2^31) >> 32                     (SMMULR)
 *   out = clamp(((hi + ((1 << shift[c]) >> 1)) >> shift[c]) + out_zp, act_min, act_max)
 * with per-output-channel mult (int32) and shift (0..31). Input and weight zero points are 0.
 * fp32: float accumulation, out = clamp(acc, f_min, f_max).
 */
#ifndef HW_KERNELS_H
#define HW_KERNELS_H
#include <stdint.h>

enum { HW_FMT_DENSE = 0, HW_FMT_CSR = 1, HW_FMT_BITMASK = 2, HW_FMT_NM = 3, HW_FMT_BLOCK = 4 };

typedef struct {
    uint32_t rows, cols;
    const void *values;     /* int8_t or float */
    const void *idx;        /* CSR column / BLOCK block-column indices */
    const void *ptr;        /* CSR row / BLOCK block-row pointers */
    const uint32_t *mask;   /* BITMASK words */
    const uint8_t *meta;    /* NM index metadata */
    uint8_t fmt, idx_bytes, ptr_bytes, meta_bits;
    uint8_t n, m, bh, bw;
} hw_mat_t;

typedef struct {
    const int32_t *mult;    /* int8: per-output-channel multiplier */
    const int8_t *shift;    /* int8: per-output-channel rounding right shift (0..31) */
    int32_t out_zp, act_min, act_max;
    float f_min, f_max;     /* fp32 clamp (use -inf/+inf for none, 0/+inf for ReLU) */
} hw_epi_t;

typedef struct {
    uint16_t in_h, in_w, in_c, out_h, out_w, out_c;
    uint16_t k_h, k_w, stride_h, stride_w, pad_h, pad_w, groups;
} hw_conv_t;

/* One output vector y[rows] = epilogue(W x + bias); ch0 offsets the per-channel epilogue. */
typedef void (*hw_mv_s8_fn)(const hw_mat_t *W, const int8_t *x, int8_t *y, const int32_t *bias,
                            const hw_epi_t *e, uint32_t ch0);
typedef void (*hw_mv_f32_fn)(const hw_mat_t *W, const float *x, float *y, const float *bias,
                             const hw_epi_t *e, uint32_t ch0);

/* Returns NULL for an unknown format. */
hw_mv_s8_fn hw_mv_select_s8(uint8_t fmt);
hw_mv_f32_fn hw_mv_select_f32(uint8_t fmt);

/* Linear: x[batch][cols] -> y[batch][rows]. Returns 0, or -1 for an unsupported format. */
int hw_linear_s8(const hw_mat_t *W, const int32_t *bias, const hw_epi_t *e, const int8_t *x,
                 int8_t *y, uint32_t batch);
int hw_linear_f32(const hw_mat_t *W, const float *bias, const hw_epi_t *e, const float *x, float *y,
                  uint32_t batch);

/* Conv2d (conv1d: in_h = out_h = k_h = 1). mats[groups], each out_c/groups x k_h*k_w*in_c/groups.
 * col: scratch of k_h*k_w*in_c elements (unused for 1x1 ungrouped convolutions). */
int hw_conv2d_s8(const hw_conv_t *c, const hw_mat_t *mats, const int32_t *bias, const hw_epi_t *e,
                 const int8_t *x, int8_t *y, int8_t *col);
int hw_conv2d_f32(const hw_conv_t *c, const hw_mat_t *mats, const float *bias, const hw_epi_t *e,
                  const float *x, float *y, float *col);

/* Depthwise conv2d (channel multiplier 1): W is in_c x k_h*k_w in DENSE, CSR or BITMASK.
 * scratch: in_c elements (sparse formats: a zero row for padded taps) + k_h*k_w pointers. */
int hw_dwconv2d_s8(const hw_conv_t *c, const hw_mat_t *W, const int32_t *bias, const hw_epi_t *e,
                   const int8_t *x, int8_t *y, void *scratch);
int hw_dwconv2d_f32(const hw_conv_t *c, const hw_mat_t *W, const float *bias, const hw_epi_t *e,
                    const float *x, float *y, void *scratch);

#endif
