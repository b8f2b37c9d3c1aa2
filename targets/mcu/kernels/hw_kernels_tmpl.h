/*
 * Format kernels written once for both element types. The including file defines
 *   T      element type (int8_t / float)      ACC   accumulator (int32_t / float)
 *   SFX    name suffix (s8 / f32)             EPI(acc, ch)  epilogue to T for channel ch
 * and, for int8, its own dense matvec (SMLAD); HW_TMPL_DENSE asks this file for a plain one.
 */
#define HW_CAT2(a, b) a##_##b
#define HW_CAT(a, b) HW_CAT2(a, b)
#define FN(name) HW_CAT(name, SFX)

static inline uint32_t FN(hw_ptr_at)(const hw_mat_t *W, uint32_t i)
{
    return W->ptr_bytes == 2 ? ((const uint16_t *)W->ptr)[i] : ((const uint32_t *)W->ptr)[i];
}

#ifdef HW_TMPL_DENSE
static void FN(hw_mv_dense)(const hw_mat_t *W, const T *x, T *y, const ACC *bias,
                            const hw_epi_t *e, uint32_t ch0)
{
    const T *w = (const T *)W->values;
    const uint32_t K = W->cols;
    for (uint32_t n = 0; n < W->rows; ++n) {
        ACC acc = bias[n];
        for (uint32_t k = 0; k < K; ++k)
            acc += (ACC)w[k] * (ACC)x[k];
        w += K;
        y[n] = EPI(acc, ch0 + n);
    }
}
#endif

/* CSR: one loop per row over its nonzeros; the index width is a template parameter. */
#define HW_CSR_BODY(IT)                                                        \
    const T *v = (const T *)W->values;                                         \
    const IT *ci = (const IT *)W->idx;                                         \
    uint32_t p0 = FN(hw_ptr_at)(W, 0);                                         \
    for (uint32_t n = 0; n < W->rows; ++n) {                                   \
        uint32_t p1 = FN(hw_ptr_at)(W, n + 1);                                 \
        ACC acc = bias[n];                                                     \
        for (uint32_t c = p1 - p0; c != 0; --c)                                \
            acc += (ACC)(*v++) * (ACC)x[*ci++];                                \
        p0 = p1;                                                               \
        y[n] = EPI(acc, ch0 + n);                                              \
    }

static void FN(hw_mv_csr8)(const hw_mat_t *W, const T *x, T *y, const ACC *bias,
                           const hw_epi_t *e, uint32_t ch0)
{
    HW_CSR_BODY(uint8_t)
}

static void FN(hw_mv_csr16)(const hw_mat_t *W, const T *x, T *y, const ACC *bias,
                            const hw_epi_t *e, uint32_t ch0)
{
    HW_CSR_BODY(uint16_t)
}

static void FN(hw_mv_csr)(const hw_mat_t *W, const T *x, T *y, const ACC *bias,
                          const hw_epi_t *e, uint32_t ch0)
{
    if (W->idx_bytes == 1)
        FN(hw_mv_csr8)(W, x, y, bias, e, ch0);
    else
        FN(hw_mv_csr16)(W, x, y, bias, e, ch0);
}

/* BITMASK: walk the set bits of each 32-bit word with CLZ; rows may straddle words. */
static void FN(hw_mv_bitmask)(const hw_mat_t *W, const T *x, T *y, const ACC *bias,
                              const hw_epi_t *e, uint32_t ch0)
{
    const T *v = (const T *)W->values;
    const uint32_t *mw = W->mask;
    const uint32_t K = W->cols;
    uint32_t pos = 0;
    for (uint32_t n = 0; n < W->rows; ++n) {
        ACC acc = bias[n];
        const uint32_t end = pos + K;
        uint32_t wi = pos >> 5;
        const uint32_t last = (end - 1) >> 5;
        const T *xb = x - (pos & 31u);
        uint32_t m = mw[wi] & (0xFFFFFFFFu >> (pos & 31u));
        for (;;) {
            if (wi == last)
                m &= ~(0x7FFFFFFFu >> ((end - 1) & 31u));
            while (m) {
                uint32_t j = (uint32_t)__builtin_clz(m);
                acc += (ACC)(*v++) * (ACC)xb[j];
                m &= ~(0x80000000u >> j);
            }
            if (wi == last)
                break;
            ++wi;
            xb += 32;
            m = mw[wi];
        }
        y[n] = EPI(acc, ch0 + n);
        pos = end;
    }
}

/* N:M: n stored values per group of m columns, index metadata as a packed bit stream. */
static void FN(hw_mv_nm)(const hw_mat_t *W, const T *x, T *y, const ACC *bias,
                         const hw_epi_t *e, uint32_t ch0)
{
    const T *v = (const T *)W->values;
    const uint8_t *mp = W->meta;
    const uint32_t N = W->n, M = W->m, G = W->cols / W->m;
    if (N == 2 && M == 4 && (W->cols & 7u) == 0) {
        /* 2:4 with byte-aligned rows: one metadata byte = two groups = four stored values. */
        const uint32_t G2 = G >> 1;
        for (uint32_t n = 0; n < W->rows; ++n) {
            ACC acc = bias[n];
            const T *xg = x;
            for (uint32_t g = G2; g != 0; --g) {
                uint32_t b = *mp++;
                acc += (ACC)v[0] * (ACC)xg[b & 3u];
                acc += (ACC)v[1] * (ACC)xg[(b >> 2) & 3u];
                acc += (ACC)v[2] * (ACC)xg[4u + ((b >> 4) & 3u)];
                acc += (ACC)v[3] * (ACC)xg[4u + (b >> 6)];
                v += 4;
                xg += 8;
            }
            y[n] = EPI(acc, ch0 + n);
        }
        return;
    }
    const uint32_t bits = W->meta_bits, bmask = (1u << bits) - 1u;
    uint32_t buf = 0, nb = 0;
    for (uint32_t n = 0; n < W->rows; ++n) {
        ACC acc = bias[n];
        const T *xg = x;
        for (uint32_t g = G; g != 0; --g) {
            for (uint32_t j = N; j != 0; --j) {
                if (nb < bits) {
                    buf |= (uint32_t)(*mp++) << nb;
                    nb += 8;
                }
                acc += (ACC)(*v++) * (ACC)xg[buf & bmask];
                buf >>= bits;
                nb -= bits;
            }
            xg += M;
        }
        y[n] = EPI(acc, ch0 + n);
    }
}

#ifndef HW_BLOCK_INNER
/* acc[r] += block row r (bw values) . xb[0..bw) */
#define HW_BLOCK_INNER(accr, wr, xb, bw)                                       \
    for (uint32_t c = 0; c < (bw); ++c)                                        \
        (accr) += (ACC)(wr)[c] * (ACC)(xb)[c];
#endif

#ifndef HW_BLOCK4_STEP
/* four block rows, one column c: a_r += w[r*bw + c] * xb[c] */
#define HW_BLOCK4_OK(bw) 1
#define HW_BLOCK4_STEPW 1u
#define HW_BLOCK4_STEP(a0, a1, a2, a3, w, xb, c, bw)                           \
    {                                                                          \
        const ACC xv = (ACC)(xb)[c];                                           \
        a0 += (ACC)(w)[c] * xv;                                                \
        a1 += (ACC)(w)[(bw) + (c)] * xv;                                       \
        a2 += (ACC)(w)[2u * (bw) + (c)] * xv;                                  \
        a3 += (ACC)(w)[3u * (bw) + (c)] * xv;                                  \
    }
#endif

/* BLOCK (BSR): bh x bw blocks, one column index per kept block, block-row pointers.
 * bh == 4 keeps the four accumulators in registers; other heights use a stack array. */
static void FN(hw_mv_block)(const hw_mat_t *W, const T *x, T *y, const ACC *bias,
                            const hw_epi_t *e, uint32_t ch0)
{
    const T *v = (const T *)W->values;
    const uint32_t bh = W->bh, bw = W->bw, BR = W->rows / W->bh, bsz = bh * bw;
    const int idx8 = W->idx_bytes == 1;
#ifdef HW_BLOCK_FAST
    if (HW_BLOCK_FAST(W, x, y, bias, e, ch0))
        return;
#endif
    uint32_t p0 = FN(hw_ptr_at)(W, 0);
    if (bh == 4u && HW_BLOCK4_OK(bw)) {
        for (uint32_t br = 0; br < BR; ++br) {
            const uint32_t p1 = FN(hw_ptr_at)(W, br + 1);
            const ACC *bb = bias + 4u * br;
            ACC a0 = bb[0], a1 = bb[1], a2 = bb[2], a3 = bb[3];
            for (uint32_t b = p0; b < p1; ++b) {
                const uint32_t col = idx8 ? ((const uint8_t *)W->idx)[b] : ((const uint16_t *)W->idx)[b];
                const T *xb = x + col * bw;
                for (uint32_t c = 0; c < bw; c += HW_BLOCK4_STEPW)
                    HW_BLOCK4_STEP(a0, a1, a2, a3, v, xb, c, bw)
                v += bsz;
            }
            T *yb = y + 4u * br;
            const uint32_t ch = ch0 + 4u * br;
            yb[0] = EPI(a0, ch);
            yb[1] = EPI(a1, ch + 1u);
            yb[2] = EPI(a2, ch + 2u);
            yb[3] = EPI(a3, ch + 3u);
            p0 = p1;
        }
        return;
    }
    ACC acc[16];
    for (uint32_t br = 0; br < BR; ++br) {
        const uint32_t p1 = FN(hw_ptr_at)(W, br + 1);
        const ACC *bb = bias + br * bh;
        for (uint32_t r = 0; r < bh; ++r)
            acc[r] = bb[r];
        for (uint32_t b = p0; b < p1; ++b) {
            const uint32_t col = idx8 ? ((const uint8_t *)W->idx)[b] : ((const uint16_t *)W->idx)[b];
            const T *xb = x + col * bw;
            const T *wr = v;
            for (uint32_t r = 0; r < bh; ++r) {
                HW_BLOCK_INNER(acc[r], wr, xb, bw)
                wr += bw;
            }
            v += bsz;
        }
        T *yb = y + br * bh;
        for (uint32_t r = 0; r < bh; ++r)
            yb[r] = EPI(acc[r], ch0 + br * bh + r);
        p0 = p1;
    }
}

static void FN(hw_mv_dense_any)(const hw_mat_t *W, const T *x, T *y, const ACC *bias,
                                const hw_epi_t *e, uint32_t ch0);

HW_CAT(hw_mv, HW_CAT(SFX, fn)) FN(hw_mv_select)(uint8_t fmt)
{
    switch (fmt) {
    case HW_FMT_DENSE: return FN(hw_mv_dense_any);
    case HW_FMT_CSR: return FN(hw_mv_csr);
    case HW_FMT_BITMASK: return FN(hw_mv_bitmask);
    case HW_FMT_NM: return FN(hw_mv_nm);
    case HW_FMT_BLOCK: return FN(hw_mv_block);
    default: return 0;
    }
}

int FN(hw_linear)(const hw_mat_t *W, const ACC *bias, const hw_epi_t *e, const T *x, T *y,
                  uint32_t batch)
{
    HW_CAT(hw_mv, HW_CAT(SFX, fn)) mv = FN(hw_mv_select)(W->fmt);
    if (!mv)
        return -1;
    for (uint32_t b = 0; b < batch; ++b)
        mv(W, x + b * W->cols, y + b * W->rows, bias, e, 0);
    return 0;
}

static inline void FN(hw_copy)(T *d, const T *s, uint32_t n)
{
#ifdef HW_COPY_WORDS
    /* int8: four elements per (unaligned) word move */
    for (; n >= 4; n -= 4, d += 4, s += 4) {
        uint32_t t;
        __builtin_memcpy(&t, s, 4);
        __builtin_memcpy(d, &t, 4);
    }
#endif
    for (; n != 0; --n)
        *d++ = *s++;
}

static inline void FN(hw_zero)(T *d, uint32_t n)
{
    for (; n != 0; --n)
        *d++ = (T)0;
}

int FN(hw_conv2d)(const hw_conv_t *c, const hw_mat_t *mats, const ACC *bias, const hw_epi_t *e,
                  const T *x, T *y, T *col)
{
    HW_CAT(hw_mv, HW_CAT(SFX, fn)) mv = FN(hw_mv_select)(mats[0].fmt);
    if (!mv)
        return -1;
    const uint32_t H = c->in_h, Wd = c->in_w, Ci = c->in_c, Co = c->out_c;
    const uint32_t KH = c->k_h, KW = c->k_w, G = c->groups;
    const uint32_t Cig = Ci / G, Cog = Co / G, Kg = KH * KW * Cig;
    const int direct = (KH == 1 && KW == 1 && G == 1 && c->pad_h == 0 && c->pad_w == 0);
    T *yp = y;
    for (uint32_t oh = 0; oh < c->out_h; ++oh) {
        const int32_t ih0 = (int32_t)(oh * c->stride_h) - (int32_t)c->pad_h;
        for (uint32_t ow = 0; ow < c->out_w; ++ow) {
            const int32_t iw0 = (int32_t)(ow * c->stride_w) - (int32_t)c->pad_w;
            const T *colp;
            if (direct) {
                colp = x + ((uint32_t)ih0 * Wd + (uint32_t)iw0) * Ci;
            } else {
                T *d = col;
                for (uint32_t g = 0; g < G; ++g) {
                    for (uint32_t kh = 0; kh < KH; ++kh) {
                        const int32_t ih = ih0 + (int32_t)kh;
                        if (ih < 0 || ih >= (int32_t)H) {
                            FN(hw_zero)(d, KW * Cig);
                            d += KW * Cig;
                            continue;
                        }
                        const T *src = x + (uint32_t)ih * Wd * Ci + g * Cig;
                        for (uint32_t kw = 0; kw < KW; ++kw) {
                            const int32_t iw = iw0 + (int32_t)kw;
                            if (iw < 0 || iw >= (int32_t)Wd)
                                FN(hw_zero)(d, Cig);
                            else
                                FN(hw_copy)(d, src + (uint32_t)iw * Ci, Cig);
                            d += Cig;
                        }
                    }
                }
                colp = col;
            }
            for (uint32_t g = 0; g < G; ++g)
                mv(&mats[g], colp + g * Kg, yp + g * Cog, bias + g * Cog, e, g * Cog);
            yp += Co;
        }
    }
    return 0;
}

/* Depthwise: per output pixel, per channel, the valid taps only (padding is skipped); a 3x3
 * window that lies fully inside the input takes an unrolled path. */
static void FN(hw_dw_dense)(const hw_conv_t *c, const hw_mat_t *W, const ACC *bias,
                            const hw_epi_t *e, const T *x, T *y)
{
    const uint32_t H = c->in_h, Wd = c->in_w, C = c->in_c, KH = c->k_h, KW = c->k_w;
    const uint32_t T_ = KH * KW, RS = Wd * C, C2 = 2u * C;
    const T *w = (const T *)W->values;
    T *yp = y;
    for (uint32_t oh = 0; oh < c->out_h; ++oh) {
        const int32_t ih0 = (int32_t)(oh * c->stride_h) - (int32_t)c->pad_h;
        const uint32_t kh0 = ih0 < 0 ? (uint32_t)(-ih0) : 0u;
        const uint32_t kh1 = (int32_t)H - ih0 < (int32_t)KH ? (uint32_t)((int32_t)H - ih0) : KH;
        for (uint32_t ow = 0; ow < c->out_w; ++ow) {
            const int32_t iw0 = (int32_t)(ow * c->stride_w) - (int32_t)c->pad_w;
            const uint32_t kw0 = iw0 < 0 ? (uint32_t)(-iw0) : 0u;
            const uint32_t kw1 = (int32_t)Wd - iw0 < (int32_t)KW ? (uint32_t)((int32_t)Wd - iw0) : KW;
            const T *xbase = x + (int32_t)((ih0 * (int32_t)Wd + iw0) * (int32_t)C);
            if (KH == 3u && KW == 3u && kh0 == 0u && kw0 == 0u && kh1 == 3u && kw1 == 3u) {
                const T *wr = w;
                const T *xr = xbase;
                for (uint32_t ch = C; ch != 0; --ch) {
                    ACC acc = bias[C - ch];
                    const T *r0 = xr, *r1 = xr + RS, *r2 = xr + 2u * RS;
                    acc += (ACC)wr[0] * (ACC)r0[0];
                    acc += (ACC)wr[1] * (ACC)r0[C];
                    acc += (ACC)wr[2] * (ACC)r0[C2];
                    acc += (ACC)wr[3] * (ACC)r1[0];
                    acc += (ACC)wr[4] * (ACC)r1[C];
                    acc += (ACC)wr[5] * (ACC)r1[C2];
                    acc += (ACC)wr[6] * (ACC)r2[0];
                    acc += (ACC)wr[7] * (ACC)r2[C];
                    acc += (ACC)wr[8] * (ACC)r2[C2];
                    *yp++ = EPI(acc, C - ch);
                    wr += 9;
                    ++xr;
                }
                continue;
            }
            const uint32_t nkh = kh1 - kh0, nkw = kw1 - kw0;
            const T *wr = w + kh0 * KW + kw0;
            const T *xr = xbase + (kh0 * Wd + kw0) * C;
            for (uint32_t ch = 0; ch < C; ++ch) {
                ACC acc = bias[ch];
                const T *wk = wr, *xk = xr;
                for (uint32_t kh = nkh; kh != 0; --kh) {
                    const T *xq = xk;
                    for (uint32_t kw = 0; kw < nkw; ++kw) {
                        acc += (ACC)wk[kw] * (ACC)(*xq);
                        xq += C;
                    }
                    wk += KW;
                    xk += RS;
                }
                *yp++ = EPI(acc, ch);
                wr += T_;
                ++xr;
            }
        }
    }
}

/* Sparse depthwise: a per-pixel table of tap pointers (a zero row for padded taps), then each
 * channel's kept taps from CSR or BITMASK. */
static void FN(hw_dw_sparse)(const hw_conv_t *c, const hw_mat_t *W, const ACC *bias,
                             const hw_epi_t *e, const T *x, T *y, void *scratch)
{
    const uint32_t H = c->in_h, Wd = c->in_w, C = c->in_c, KH = c->k_h, KW = c->k_w;
    const uint32_t T_ = KH * KW;
    T *zero = (T *)scratch;
    const T **tp = (const T **)(((uintptr_t)(zero + C) + 7u) & ~(uintptr_t)7u);
    FN(hw_zero)(zero, C);
    T *yp = y;
    for (uint32_t oh = 0; oh < c->out_h; ++oh) {
        const int32_t ih0 = (int32_t)(oh * c->stride_h) - (int32_t)c->pad_h;
        for (uint32_t ow = 0; ow < c->out_w; ++ow) {
            const int32_t iw0 = (int32_t)(ow * c->stride_w) - (int32_t)c->pad_w;
            const T **t = tp;
            for (uint32_t kh = 0; kh < KH; ++kh) {
                const int32_t ih = ih0 + (int32_t)kh;
                for (uint32_t kw = 0; kw < KW; ++kw) {
                    const int32_t iw = iw0 + (int32_t)kw;
                    *t++ = (ih < 0 || ih >= (int32_t)H || iw < 0 || iw >= (int32_t)Wd)
                               ? zero : x + ((uint32_t)ih * Wd + (uint32_t)iw) * C;
                }
            }
            const T *v = (const T *)W->values;
            if (W->fmt == HW_FMT_CSR) {
                const uint8_t *ci = (const uint8_t *)W->idx;
                uint32_t p0 = FN(hw_ptr_at)(W, 0);
                for (uint32_t ch = 0; ch < C; ++ch) {
                    const uint32_t p1 = FN(hw_ptr_at)(W, ch + 1);
                    ACC acc = bias[ch];
                    for (uint32_t k = p1 - p0; k != 0; --k)
                        acc += (ACC)(*v++) * (ACC)tp[*ci++][ch];
                    p0 = p1;
                    yp[ch] = EPI(acc, ch);
                }
            } else {
                const uint32_t *mw = W->mask;
                uint32_t pos = 0;
                for (uint32_t ch = 0; ch < C; ++ch) {
                    ACC acc = bias[ch];
                    const uint32_t end = pos + T_;
                    uint32_t wi = pos >> 5;
                    const uint32_t last = (end - 1) >> 5;
                    const T **tb = tp - (pos & 31u);
                    uint32_t m = mw[wi] & (0xFFFFFFFFu >> (pos & 31u));
                    for (;;) {
                        if (wi == last)
                            m &= ~(0x7FFFFFFFu >> ((end - 1) & 31u));
                        while (m) {
                            uint32_t j = (uint32_t)__builtin_clz(m);
                            acc += (ACC)(*v++) * (ACC)tb[j][ch];
                            m &= ~(0x80000000u >> j);
                        }
                        if (wi == last)
                            break;
                        ++wi;
                        tb += 32;
                        m = mw[wi];
                    }
                    yp[ch] = EPI(acc, ch);
                    pos = end;
                }
            }
            yp += C;
        }
    }
}

int FN(hw_dwconv2d)(const hw_conv_t *c, const hw_mat_t *W, const ACC *bias, const hw_epi_t *e,
                    const T *x, T *y, void *scratch)
{
    switch (W->fmt) {
    case HW_FMT_DENSE: FN(hw_dw_dense)(c, W, bias, e, x, y); return 0;
    case HW_FMT_CSR:
        if (W->idx_bytes != 1)
            return -1;
        FN(hw_dw_sparse)(c, W, bias, e, x, y, scratch);
        return 0;
    case HW_FMT_BITMASK: FN(hw_dw_sparse)(c, W, bias, e, x, y, scratch); return 0;
    default: return -1;
    }
}
