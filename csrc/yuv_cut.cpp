// Fused YUV 4:2:0 frames -> cropped, antialiased-resized, flipped, ImageNet-normalised float clip.
//
// Why: a PyAV DataLoader worker otherwise converts whole decoded frames to RGB (swscale), then
// crops, resizes and normalises them in torch; converting only the crop, row by row straight into
// the resize, and writing the normalised clip once takes 5-10% less of the worker's time per clip
// (bench/bench_decode.py).
//
// The maths is that of ivn_fast.data.native.cut_yuv420_reference (the PyTorch path it is tested
// against): exact BT.601 / BT.709 YUV -> RGB in float with nearest-neighbour chroma (chroma sample
// (r, c) covers luma pixels (2r..2r+1, 2c..2c+1)), clamped to [0, 255]; then the antialiased
// bilinear resize of torch's F.interpolate(mode="bilinear", antialias=True, align_corners=False)
// (PIL's), horizontal then vertical; then the flip and v * scale[c] + shift[c] per channel.
//
// Plain C++17, no Python or torch headers: built at run time by ivn_fast/data/native.py.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// Antialiased bilinear weights along one axis, computed as torch's _upsample_bilinear2d_aa does:
// output i is centred at scale * (i + 0.5) input pixels; the triangle filter is stretched by the
// scale when shrinking (support = scale), not when enlarging (support = 1); weights sum to one.
// Every output gets the same number of taps (`count`, zero-padded, the window moved inside the
// input where it would pass its end), so the loops over them have a fixed length.
struct Taps {
    std::vector<int> first;
    std::vector<float> weight;  // `count` per output
    int count = 0;
};

Taps make_taps(int in, int out) {
    const double scale = double(in) / out;
    const double support = scale >= 1.0 ? scale : 1.0;
    const double inv_scale = scale >= 1.0 ? 1.0 / scale : 1.0;
    std::vector<int> lo(out), n(out);
    for (int i = 0; i < out; ++i) {
        const double center = scale * (i + 0.5);
        lo[i] = std::max(int(center - support + 0.5), 0);  // int(): truncation, as torch
        n[i] = std::min(int(center + support + 0.5), in) - lo[i];
    }
    Taps t;
    t.count = *std::max_element(n.begin(), n.end());
    t.first.resize(out);
    t.weight.assign(size_t(out) * t.count, 0.0f);
    std::vector<double> w(t.count);
    for (int i = 0; i < out; ++i) {
        const double center = scale * (i + 0.5);
        double total = 0.0;
        for (int k = 0; k < n[i]; ++k) {
            const double x = std::abs((lo[i] + k - center + 0.5) * inv_scale);
            w[k] = x < 1.0 ? 1.0 - x : 0.0;
            total += w[k];
        }
        t.first[i] = std::min(lo[i], in - t.count);
        float* dst = &t.weight[size_t(i) * t.count + (lo[i] - t.first[i])];
        for (int k = 0; k < n[i]; ++k) dst[k] = float(total > 0 ? w[k] / total : w[k]);
    }
    return t;
}

// YUV -> RGB levels: R = a (Y - y0) + rv (V - 128), G = a (Y - y0) + gu (U - 128) + gv (V - 128),
// B = a (Y - y0) + bu (U - 128). Limited range stretches Y 16..235 and chroma 16..240 to 0..255.
struct Matrix {
    float a, y0, rv, gu, gv, bu;
};

Matrix matrix(bool full_range, bool bt709) {
    const double kr = bt709 ? 0.2126 : 0.299, kb = bt709 ? 0.0722 : 0.114, kg = 1.0 - kr - kb;
    const double a = full_range ? 1.0 : 255.0 / 219.0, c = full_range ? 1.0 : 255.0 / 224.0;
    return {float(a), full_range ? 0.0f : 16.0f, float(c * 2 * (1 - kr)), float(-c * 2 * kb * (1 - kb) / kg),
            float(-c * 2 * kr * (1 - kr) / kg), float(c * 2 * (1 - kb))};
}

float clamp255(float x) {  // branch-free: a plain compare-select (std::min/max would branch)
    x = x > 0.0f ? x : 0.0f;
    return x < 255.0f ? x : 255.0f;
}

// The chroma terms of one chroma row, spread over the crop's columns left..left+width-1: what
// U and V add to R, G and B at each pixel. Computed once per two luma rows.
void chroma_row(const uint8_t* u, const uint8_t* v, int left, int width, const Matrix& m, float* __restrict dr,
                float* __restrict dg, float* __restrict db) {
    const float rv = m.rv, gu = m.gu, gv = m.gv, bu = m.bu;
    for (int x = 0; x < width; ++x) {
        const int c = (left + x) >> 1;
        const float cb = u[c] - 128.0f, cr = v[c] - 128.0f;
        dr[x] = rv * cr;
        dg[x] = gu * cb + gv * cr;
        db[x] = bu * cb;
    }
}

// One row of the crop (luma y, chroma terms d*) as R, G, B levels; vectorises.
void convert_row(const uint8_t* __restrict y, const float* __restrict dr, const float* __restrict dg,
                 const float* __restrict db, int width, const Matrix& m, float* __restrict r, float* __restrict g,
                 float* __restrict b) {
    const float a = m.a, y0 = m.y0;
    for (int x = 0; x < width; ++x) {
        const float luma = a * (y[x] - y0);
        r[x] = clamp255(luma + dr[x]);
        g[x] = clamp255(luma + dg[x]);
        b[x] = clamp255(luma + db[x]);
    }
}

// One row of R, G, B resampled along x, the three channels together (independent sums run in
// parallel); `flip` mirrors the output. K: the taps per output when known at compile time (the
// loop over them unrolls: a quarter faster), 0 for t.count.
template <int K>
void resample_row(const float* r, const float* g, const float* b, const Taps& t, bool flip, float* __restrict dr,
                  float* __restrict dg, float* __restrict db) {
    const int size = int(t.first.size()), count = K > 0 ? K : t.count;
    for (int i = 0; i < size; ++i) {
        const float* w = &t.weight[size_t(i) * count];
        const int s = t.first[i];
        float ar = 0.0f, ag = 0.0f, ab = 0.0f;
        for (int k = 0; k < count; ++k) {
            ar += w[k] * r[s + k];
            ag += w[k] * g[s + k];
            ab += w[k] * b[s + k];
        }
        const int j = flip ? size - 1 - i : i;
        dr[j] = ar;
        dg[j] = ag;
        db[j] = ab;
    }
}

// Rows of `src` (each `size` wide) resampled along y into `dst` and normalised; vectorises along
// the rows. K as above.
template <int K>
void resample_columns(const float* src, const Taps& t, float scale, float shift, float* __restrict dst) {
    const int size = int(t.first.size()), count = K > 0 ? K : t.count;
    for (int i = 0; i < size; ++i) {
        const float* w = &t.weight[size_t(i) * count];
        const float* s = src + size_t(t.first[i]) * size;
        float* out = dst + size_t(i) * size;
        for (int j = 0; j < size; ++j) {
            float acc = 0.0f;
            for (int k = 0; k < count; ++k) acc += w[k] * s[size_t(k) * size + j];
            out[j] = acc * scale + shift;
        }
    }
}

// The passes for a tap count: unrolled for the usual ones (2-3 enlarging, up to 8 shrinking by
// up to 3.5x), the plain loop beyond.
using RowPass = void (*)(const float*, const float*, const float*, const Taps&, bool, float*, float*, float*);
using ColumnPass = void (*)(const float*, const Taps&, float, float, float*);

RowPass row_pass(int count) {
    switch (count) {
        case 2: return resample_row<2>;
        case 3: return resample_row<3>;
        case 4: return resample_row<4>;
        case 5: return resample_row<5>;
        case 6: return resample_row<6>;
        case 7: return resample_row<7>;
        case 8: return resample_row<8>;
        default: return resample_row<0>;
    }
}

ColumnPass column_pass(int count) {
    switch (count) {
        case 2: return resample_columns<2>;
        case 3: return resample_columns<3>;
        case 4: return resample_columns<4>;
        case 5: return resample_columns<5>;
        case 6: return resample_columns<6>;
        case 7: return resample_columns<7>;
        case 8: return resample_columns<8>;
        default: return resample_columns<0>;
    }
}

}  // namespace

// planes[3 t + p], strides[3 t + p]: plane p (Y, U, V) of frame t and its row stride in bytes; the
// crop (top, left, crop_h, crop_w) must lie inside the frame. out: float [3, frames, size, size].
extern "C" void ivn_yuv420_cut(const uint8_t* const* planes, const int64_t* strides, int frames, int top,
                               int left, int crop_h, int crop_w, int size, int flip, int full_range, int bt709,
                               const float* scale, const float* shift, float* out) {
    const Taps along_x = make_taps(crop_w, size), along_y = make_taps(crop_h, size);
    const RowPass resample_x = row_pass(along_x.count);
    const ColumnPass resample_y = column_pass(along_y.count);
    const Matrix m = matrix(full_range != 0, bt709 != 0);
    // scratch kept per thread: fresh buffers of this size would be new pages, zeroed, on every call
    thread_local std::vector<float> rgb, terms, rows;
    rgb.resize(size_t(3) * crop_w);
    terms.resize(size_t(3) * crop_w);
    rows.resize(size_t(3) * crop_h * size);
    float *r = rgb.data(), *g = r + crop_w, *b = g + crop_w, *dr = terms.data(), *dg = dr + crop_w, *db = dg + crop_w;
    const size_t plane = size_t(crop_h) * size, channel = size_t(frames) * size * size;
    for (int t = 0; t < frames; ++t) {
        const uint8_t* const* p = planes + 3 * t;
        const int64_t* s = strides + 3 * t;
        for (int y = 0; y < crop_h; ++y) {
            const int row = top + y;
            if (y == 0 || row % 2 == 0)
                chroma_row(p[1] + (row >> 1) * s[1], p[2] + (row >> 1) * s[2], left, crop_w, m, dr, dg, db);
            convert_row(p[0] + row * s[0] + left, dr, dg, db, crop_w, m, r, g, b);
            float* dst = &rows[size_t(y) * size];
            resample_x(r, g, b, along_x, flip != 0, dst, dst + plane, dst + 2 * plane);
        }
        for (int c = 0; c < 3; ++c)
            resample_y(&rows[c * plane], along_y, scale[c], shift[c], out + c * channel + size_t(t) * size * size);
    }
}
