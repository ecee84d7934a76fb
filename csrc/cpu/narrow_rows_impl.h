// Softmax rows of few classes (cross_entropy, focal_loss), one row per lane.
// Included by loss_kernels_impl.h inside its ISA namespace.
//
// A row of the row kernel costs about 30 ns on top of its classes' arithmetic
// (a horizontal max and sum, partial loads and stores, the scalar
// coefficients): at C <= 32 that is most of it, and torch's own log_softmax
// for C = 16 took 10 ns a row against our 30 (4096x16, one thread). Here W
// rows go together, transposed into a block of the accumulation type, and
// every pass is vector arithmetic across rows: no horizontal step. Each lane
// sums its row's classes in order, so a row's result depends neither on its
// block nor on the instruction set's vector width. The formulas are
// samplewt_math.h's, as in row_kernel_typed.


// A row's own cost in the narrow kernel, in classes' worth of work: the
// parallel grain counts it, or 4096 rows of 2 classes would run on one thread.
constexpr int64_t kNarrowRowCost = 8;
// Blocks of W rows transposed at a time (see the kernel's buffers).
constexpr int64_t kNarrowBlocks = 4;

template <typename scalar_t>
void narrow_row_kernel_typed(const RowArgs& a) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vectorized<acc_t>;
  using M = VecMath<acc_t>;
  constexpr int64_t W = V::size();
  const int64_t C = a.cols;
  const RowScalars<acc_t> sc(a);
  const acc_t sum_cw = static_cast<acc_t>(a.sum_class_weight);
  const bool linear = sc.prob || sc.eps != acc_t(0);
  // As in row_kernel_typed: every a_j is 0 for the focal loss and for index
  // targets without label smoothing, and then, without statistics, the
  // gradient is one product per element.
  const bool zero_coef = sc.focal || (!sc.prob && sc.eps == acc_t(0));
  const bool lean = zero_coef && a.stats == nullptr;
  const acc_t a_smooth = sc.prob ? acc_t(0) : sc.q_shift;
  const int64_t grain = std::max<int64_t>(W, kGrainElems / (C + kNarrowRowCost));
  // In locals: the buffers' stores could alias a's fields, which the
  // transposing loop would then reload for every element.
  const auto* input = static_cast<const scalar_t*>(a.input);
  const auto* target_prob = static_cast<const scalar_t*>(a.target_prob);
  auto* grad = static_cast<scalar_t*>(a.grad);
  float* stats = a.stats;
  const int64_t* target = a.target;
  const int64_t ld_input = a.ld_input, ld_target = a.ld_target, ld_grad = a.ld_grad;
  const int64_t ignore_index = a.ignore_index;
  const RowLoss kind = a.kind;
  // Row r's class c at row_at(r, ld) + c * cs (RowLayout::positions).
  const int64_t P = a.positions, cs = P;
  const auto row_at = [P](int64_t r, int64_t ld) { return P == 1 ? r * ld : (r / P) * ld + r % P; };
  // Whether the W rows from r0 on lie side by side in one sample: then each
  // class's W logits are one contiguous run, copied as a vector.
  const auto side_by_side = [P](int64_t r0, int64_t nb) { return P > 1 && nb == W && r0 % P + W <= P; };

  at::parallel_for(0, a.rows, grain, [&](int64_t begin, int64_t end) {
    // Class c of lane l of block k at k * kNarrowBlock + c * W + l: the
    // logits, then exp(x - m), then the gradient. kNarrowBlocks blocks are
    // transposed in before the first is read: a vector read right after the
    // scalar stores that fill it waits for them to leave the store buffer
    // (its vmaxps took 14% of the kernel at 4096x16).
    constexpr int64_t kNarrowBlock = kNarrowCols * W;
    alignas(64) acc_t xbuf[kNarrowBlocks * kNarrowBlock];
    alignas(64) acc_t qbuf[kNarrowBlocks * kNarrowBlock];  // probability targets
    alignas(64) acc_t ybuf[kNarrowBlocks * W];
    alignas(64) acc_t livebuf[kNarrowBlocks * W];  // 1 for a row's lane, 0 for a skipped one
    alignas(64) acc_t l_p_y[W], l_sq[W], l_l1[W];
    bool skipbuf[kNarrowBlocks * W];
    for (int64_t s0 = begin; s0 < end; s0 += kNarrowBlocks * W) {
      const int64_t span = std::min(kNarrowBlocks * W, end - s0);
      const int64_t span_blocks = (span + W - 1) / W;
      for (int64_t i = 0; i < span_blocks * W; ++i) {
        const bool live = i < span;
        const int64_t y = (!sc.prob && live) ? target[s0 + i] : -1;
        skipbuf[i] = !live || (!sc.prob && y == ignore_index);
        // -1 matches no class: an ignored row's lane adds no target term.
        ybuf[i] = skipbuf[i] ? acc_t(-1) : static_cast<acc_t>(y);
        livebuf[i] = skipbuf[i] ? acc_t(0) : acc_t(1);
      }
      for (int64_t k = 0; k < span_blocks; ++k) {
        acc_t* xb = xbuf + k * kNarrowBlock;
        acc_t* qb = qbuf + k * kNarrowBlock;
        const int64_t r0 = s0 + k * W, nb = std::min(W, end - r0);
        if (side_by_side(r0, nb)) {
          const scalar_t* x = input + row_at(r0, ld_input);
          for (int64_t c = 0; c < C; ++c) {
            for (int64_t l = 0; l < W; ++l) xb[c * W + l] = static_cast<acc_t>(x[c * cs + l]);
          }
          if (sc.prob) {
            const scalar_t* q = target_prob + row_at(r0, ld_target);
            for (int64_t c = 0; c < C; ++c) {
              for (int64_t l = 0; l < W; ++l) qb[c * W + l] = static_cast<acc_t>(q[c * cs + l]);
            }
          }
          continue;
        }
        for (int64_t l = 0; l < W; ++l) {
          if (l < nb) {
            const scalar_t* x = input + row_at(r0 + l, ld_input);
            for (int64_t c = 0; c < C; ++c) xb[c * W + l] = static_cast<acc_t>(x[c * cs]);
            if (sc.prob) {
              const scalar_t* q = target_prob + row_at(r0 + l, ld_target);
              for (int64_t c = 0; c < C; ++c) qb[c * W + l] = static_cast<acc_t>(q[c * cs]);
            }
          } else {
            for (int64_t c = 0; c < C; ++c) xb[c * W + l] = acc_t(0);
            if (sc.prob) {
              for (int64_t c = 0; c < C; ++c) qb[c * W + l] = acc_t(0);
            }
          }
        }
      }
      for (int64_t k = 0; k < span_blocks; ++k) {
        const int64_t r0 = s0 + k * W;
        const int64_t nb = std::min(W, end - r0);
        acc_t* xb = xbuf + k * kNarrowBlock;
        const acc_t* qb = qbuf + k * kNarrowBlock;
        const acc_t* l_y = ybuf + k * W;
        const bool* skip = skipbuf + k * W;
        // Pass 1, the rows' max; pass 2, s = sum_c exp(x_c - m), the target's
        // shifted logit and class weight, and the linear sums (row_kernel_typed).
        V vmax = V::loadu(xb);
        for (int64_t c = 1; c < C; ++c) vmax = M::max(vmax, V::loadu(xb + c * W));
        const V vy = V::loadu(l_y);
        V vs(0), vbx(0), vb(0), vxs_y(0), vw_y(1);
        for (int64_t c = 0; c < C; ++c) {
          const V xs = V::loadu(xb + c * W) - vmax;
          const V e = M::softmax_exp(xs);
          e.store(xb + c * W);
          vs = vs + e;
          if (linear) {
            const V bv = linear_coef<M>(kind, sc.cw != nullptr, sc.cw ? V(sc.cw[c]) : V(0),
                                        sc.prob ? V::loadu(qb + c * W) : V(0), V(sc.q_scale), V(sc.q_shift));
            vbx = vbx + bv * xs;
            vb = vb + bv;
          }
          if (!sc.prob) {
            const V is_y = vy == V(static_cast<acc_t>(c));
            vxs_y = V::blendv(vxs_y, xs, is_y);
            if (sc.cw) vw_y = V::blendv(vw_y, V(sc.cw[c]), is_y);
          }
        }
        // An ignored or empty lane holds s = 1, as row_kernel_typed's block
        // lanes do; its loss is stored as 0 and its gradient and statistics
        // as 0 below, whatever its coefficients.
        const V vlog = M::log(vs);
        const V logp = vxs_y - vlog;
        FocalTerms<M> ft{V(0), V(0)};
        if (sc.focal) ft = focal_terms<M>(logp, V(sc.gamma));
        const RowCoef<V> rc = row_coefficients<M>(
            static_cast<int>(kind), vlog, vxs_y, vw_y, sc.eps, V(acc_t(C)), V(sum_cw),
            linear ? vbx : V(0), linear ? vb : V(0), V(sc.gamma), sc.z_loss, vmax + vlog,
            sc.focal ? &ft : nullptr);
        const V live = V::loadu(livebuf + k * W) != V(0);
        (rc.loss & live).store(sc.row_loss + r0, nb);
        if (grad == nullptr && stats == nullptr) continue;

        // Pass 3: u_j = A softmax_j - a_j (minus a_target at y), times grad_scale.
        const V vscale = !sc.grad_scale     ? V(1)
                         : sc.scale_uniform ? V(sc.grad_scale[0])
                                            : V::loadu(sc.grad_scale + r0, nb);
        const V vinv_s = M::exp(-vlog), vp_y = M::exp(logp);
        vp_y.store(l_p_y);
        const V vA = rc.A, vat = rc.a_target;
        const V vlean = vA * vinv_s * vscale;
        const V va_y = (!sc.prob && sc.cw) ? V(a_smooth) * vw_y : V(a_smooth);
        const V vgy = sc.prob ? V(0) : (vA * vp_y - va_y - vat) * vscale;
        V vsq(0), vl1(0);
        for (int64_t c = 0; c < C; ++c) {
          const V e = V::loadu(xb + c * W);
          const V is_y = vy == V(static_cast<acc_t>(c));
          V u;
          if (lean) {
            u = e * vlean;
            if (!sc.prob) u = V::blendv(u, vgy, is_y);
          } else {
            const V av = zero_coef ? V(0)
                                   : grad_coef<M>(kind, sc.cw != nullptr, sc.cw ? V(sc.cw[c]) : V(0),
                                                  sc.prob ? V::loadu(qb + c * W) : V(0), V(sc.q_scale),
                                                  V(sc.q_shift));
            const V p = e * vinv_s;
            u = softmax_grad_p<M>(p, vA, av);
            if (!sc.prob) u = u - (vat & is_y);
            if (stats) {
              vsq = vsq + u * u;
              if (sc.prob) vl1 = vl1 + (p - V::loadu(qb + c * W)).abs();
            }
            u = u * vscale;
          }
          u.store(xb + c * W);
        }
        vsq.store(l_sq);
        vl1.store(l_l1);
        const bool runs = grad && side_by_side(r0, nb);
        if (runs) {
          scalar_t* g = grad + row_at(r0, ld_grad);
          for (int64_t c = 0; c < C; ++c) {
            for (int64_t l = 0; l < W; ++l) {
              g[c * cs + l] = skip[l] ? scalar_t(0) : static_cast<scalar_t>(xb[c * W + l]);
            }
          }
        }
        for (int64_t l = 0; l < nb; ++l) {
          const int64_t r = r0 + l;
          if (grad && !runs) {
            scalar_t* g = grad + row_at(r, ld_grad);
            for (int64_t c = 0; c < C; ++c) {
              g[c * cs] = skip[l] ? scalar_t(0) : static_cast<scalar_t>(xb[c * W + l]);
            }
          }
          if (stats) {
            float* st = stats + 3 * r;
            if (skip[l]) {
              st[0] = st[1] = st[2] = 0.f;
            } else {
              st[0] = static_cast<float>(sc.row_loss[r]);
              st[1] = static_cast<float>(std::sqrt(l_sq[l]));
              // GHM's g = 1 - p_y (row_kernel_typed); for probabilities,
              // half the L1 distance.
              st[2] = static_cast<float>(sc.prob ? acc_t(0.5) * l_l1[l]
                                              : ghm_g_softmax<acc_t>(l_p_y[l]));
            }
          }
        }
      }
    }
  });
}
