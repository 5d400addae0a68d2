// oneDNN 3D convolutions as XLA FFI handlers (CPU): forward, backward-data and backward-weights.
//
// Tensors arrive in XLA's layouts, NDHWC activations and a DHWIO kernel, and are described to
// oneDNN by their strides, so activations need no reorder. The kernel is given to oneDNN as
// format "any" and reordered into the layout the chosen implementation wants (it is small).
// One plan (primitive, descriptors, reorders) is built per distinct convolution and cached.
// Calls are serialised: each one already uses every oneDNN thread, and two at once from two XLA
// threads would start two thread teams on the same cores.

#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

enum Kind : int64_t { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

std::mutex& CallMutex() {
  static std::mutex mutex;
  return mutex;
}

struct Geometry {
  std::vector<int64_t> x, w, y;  // NDHWC, DHWIO, NDHWC
  std::vector<int64_t> strides, pad_lo, pad_hi, dilation;
  int64_t groups;
  memory::data_type dtype;
};

memory::desc ActivationDesc(const std::vector<int64_t>& s, memory::data_type dt) {
  // logical {N, C, D, H, W}, physical NDHWC
  return memory::desc({s[0], s[4], s[1], s[2], s[3]}, dt,
                      {s[1] * s[2] * s[3] * s[4], 1, s[2] * s[3] * s[4], s[3] * s[4], s[4]});
}

memory::desc KernelDesc(const Geometry& g, memory::data_type dt) {
  // DHWIO kernel (kD, kH, kW, I/G, O); output channel o = group * (O/G) + oc.
  const auto& k = g.w;
  int64_t o = k[4], i = k[3], og = o / g.groups;
  int64_t s_kw = i * o, s_kh = k[2] * s_kw, s_kd = k[1] * s_kh;
  if (g.groups == 1) return memory::desc({o, i, k[0], k[1], k[2]}, dt, {1, o, s_kd, s_kh, s_kw});
  return memory::desc({g.groups, og, i, k[0], k[1], k[2]}, dt, {og, 1, o, s_kd, s_kh, s_kw});
}

memory::dims AnyKernelDims(const Geometry& g) {
  const auto& k = g.w;
  if (g.groups == 1) return {k[4], k[3], k[0], k[1], k[2]};
  return {g.groups, k[4] / g.groups, k[3], k[0], k[1], k[2]};
}

// One argument of a primitive: its descriptor as XLA lays it out and as the primitive wants it, and
// the reorder between the two where they differ (into the primitive's for inputs, out of it for outputs).
struct Operand {
  int arg = 0;
  bool output = false;
  memory::desc user, prim;
  bool reorder = false;
  dnnl::reorder convert;
};

// A plan: the primitive and its operands in the FFI call's order (first, second, result).
struct Plan {
  dnnl::primitive primitive;
  Operand operands[3];
  size_t scratch_bytes = 0;
};

void SetOperand(Operand& op, int arg, bool output, const memory::desc& user, const memory::desc& prim) {
  op.arg = arg;
  op.output = output;
  op.user = user;
  op.prim = prim;
  op.reorder = prim != user;
  if (op.reorder) {
    auto& eng = Engine();
    op.convert = output ? dnnl::reorder(dnnl::reorder::primitive_desc(eng, prim, eng, user))
                        : dnnl::reorder(dnnl::reorder::primitive_desc(eng, user, eng, prim));
  }
}

// Activations stay in XLA's layout (letting oneDNN choose a blocked one and reordering on every call
// measured slower for every layer shape of benchmarks/bench_conv.py).
std::unique_ptr<Plan> MakePlan(Kind kind, const Geometry& g) {
  auto& eng = Engine();
  memory::desc x_user = ActivationDesc(g.x, g.dtype), y_user = ActivationDesc(g.y, g.dtype);
  memory::desc k_user = KernelDesc(g, g.dtype);
  const memory::desc &x_md = x_user, &y_md = y_user;
  memory::desc k_any(AnyKernelDims(g), g.dtype, memory::format_tag::any);
  memory::dims strides(g.strides), lo(g.pad_lo), hi(g.pad_hi), dil;
  for (int64_t d : g.dilation) dil.push_back(d - 1);  // oneDNN counts dilation from 0
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto algo = dnnl::algorithm::convolution_direct;
  dnnl::convolution_forward::primitive_desc fwd(eng, dnnl::prop_kind::forward_training, algo, x_md, k_any,
                                                y_md, strides, dil, lo, hi, attr);
  auto plan = std::make_unique<Plan>();
  auto& ops = plan->operands;
  if (kind == kForward) {
    // The forward primitive itself for inference: the same values (no post-ops), and it admits
    // implementations the training one does not (oneDNN's brdgmm depthwise kernel).
    fwd = dnnl::convolution_forward::primitive_desc(eng, dnnl::prop_kind::forward_inference, algo, x_md, k_any, y_md,
                                                    strides, dil, lo, hi, attr);
    plan->primitive = dnnl::convolution_forward(fwd);
    SetOperand(ops[0], DNNL_ARG_SRC, false, x_user, fwd.src_desc());
    SetOperand(ops[1], DNNL_ARG_WEIGHTS, false, k_user, fwd.weights_desc());
    SetOperand(ops[2], DNNL_ARG_DST, true, y_user, fwd.dst_desc());
    plan->scratch_bytes = fwd.scratchpad_desc().get_size();
  } else if (kind == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc bwd(eng, algo, x_md, k_any, y_md, strides, dil, lo, hi, fwd,
                                                        attr);
    plan->primitive = dnnl::convolution_backward_data(bwd);
    SetOperand(ops[0], DNNL_ARG_DIFF_DST, false, y_user, bwd.diff_dst_desc());
    SetOperand(ops[1], DNNL_ARG_WEIGHTS, false, k_user, bwd.weights_desc());
    SetOperand(ops[2], DNNL_ARG_DIFF_SRC, true, x_user, bwd.diff_src_desc());
    plan->scratch_bytes = bwd.scratchpad_desc().get_size();
  } else {
    dnnl::convolution_backward_weights::primitive_desc bwd(eng, algo, x_md, k_any, y_md, strides, dil, lo, hi,
                                                           fwd, attr);
    plan->primitive = dnnl::convolution_backward_weights(bwd);
    SetOperand(ops[0], DNNL_ARG_SRC, false, x_user, bwd.src_desc());
    SetOperand(ops[1], DNNL_ARG_DIFF_DST, false, y_user, bwd.diff_dst_desc());
    SetOperand(ops[2], DNNL_ARG_DIFF_WEIGHTS, true, k_user, bwd.diff_weights_desc());
    plan->scratch_bytes = bwd.scratchpad_desc().get_size();
  }
  return plan;
}

std::vector<int64_t> PlanKey(Kind kind, const Geometry& g) {
  std::vector<int64_t> key{kind, static_cast<int64_t>(g.dtype), g.groups};
  for (const auto* v : {&g.x, &g.w, &g.y, &g.strides, &g.pad_lo, &g.pad_hi, &g.dilation})
    key.insert(key.end(), v->begin(), v->end());
  return key;
}

Plan& CachedPlan(Kind kind, const Geometry& g) {  // caller holds CallMutex()
  static std::map<std::vector<int64_t>, std::unique_ptr<Plan>> plans;
  auto key = PlanKey(kind, g);
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(std::move(key), MakePlan(kind, g)).first;
  return *it->second;
}

struct AlignedBuffer {
  void* data = nullptr;
  explicit AlignedBuffer(size_t bytes) {
    if (bytes) data = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  }
  ~AlignedBuffer() { std::free(data); }
};

std::vector<int64_t> ToVector(ffi::Span<const int64_t> span) { return {span.begin(), span.end()}; }

std::vector<int64_t> Dims(const ffi::AnyBuffer& b) {
  auto d = b.dimensions();
  return {d.begin(), d.end()};
}

// The operands by kind: forward (x, w) -> y; backward-data (dy, w) -> dx; backward-weights (x, dy) -> dw.
ffi::Error Run(Kind kind, ffi::AnyBuffer first, ffi::AnyBuffer second, ffi::Result<ffi::AnyBuffer> out,
               ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
               ffi::Span<const int64_t> dilation, int64_t groups) {
  Geometry g;
  const ffi::AnyBuffer& result = *out;
  g.x = Dims(kind == kBackwardData ? result : first);
  g.w = Dims(kind == kBackwardWeights ? result : second);
  g.y = Dims(kind == kForward ? result : (kind == kBackwardData ? first : second));
  g.strides = ToVector(strides);
  g.dilation = ToVector(dilation);
  g.groups = groups;
  if (g.x.size() != 5 || g.w.size() != 5 || g.y.size() != 5 || g.strides.size() != 3 || padding.size() != 6 ||
      g.dilation.size() != 3 || groups < 1)
    return ffi::Error::InvalidArgument("v3d oneDNN conv: expected 5D operands, 3 strides, 6 pads, 3 dilations");
  for (int i = 0; i < 3; ++i) {
    g.pad_lo.push_back(padding[2 * i]);
    g.pad_hi.push_back(padding[2 * i + 1]);
  }
  auto type = first.element_type();
  if (type == ffi::DataType::F32) g.dtype = memory::data_type::f32;
  else if (type == ffi::DataType::BF16) g.dtype = memory::data_type::bf16;
  else return ffi::Error::InvalidArgument("v3d oneDNN conv: only float32 and bfloat16 are supported");
  try {
    std::lock_guard<std::mutex> lock(CallMutex());
    Plan& plan = CachedPlan(kind, g);
    auto& eng = Engine();
    dnnl::stream stream(eng);
    void* buffers[3] = {first.untyped_data(), second.untyped_data(), out->untyped_data()};
    std::vector<std::unique_ptr<AlignedBuffer>> temporaries;
    std::unordered_map<int, memory> args;
    std::vector<std::pair<memory, memory>> write_back;  // (primitive's, user's) for reordered outputs
    for (int i = 0; i < 3; ++i) {
      const Operand& op = plan.operands[i];
      memory user(op.user, eng, buffers[i]);
      if (!op.reorder) {
        args[op.arg] = user;
        continue;
      }
      temporaries.push_back(std::make_unique<AlignedBuffer>(op.prim.get_size()));
      memory prim(op.prim, eng, temporaries.back()->data);
      if (op.output) write_back.emplace_back(prim, user);
      else op.convert.execute(stream, user, prim);
      args[op.arg] = prim;
    }
    AlignedBuffer scratch(plan.scratch_bytes);
    args[DNNL_ARG_SCRATCHPAD] = memory(memory::desc({static_cast<int64_t>(plan.scratch_bytes)}, memory::data_type::u8,
                                                    memory::format_tag::x), eng, scratch.data);
    plan.primitive.execute(stream, args);
    for (int i = 0, j = 0; i < 3; ++i)
      if (plan.operands[i].reorder && plan.operands[i].output) {
        plan.operands[i].convert.execute(stream, write_back[j].first, write_back[j].second);
        ++j;
      }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("v3d oneDNN conv: ") + e.what());
  }
  return ffi::Error::Success();
}

#define V3D_CONV_BINDING(kind_value, name)                                                                 \
  ffi::Error name##Impl(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,              \
                        ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,               \
                        ffi::Span<const int64_t> dilation, int64_t groups) {                              \
    return Run(kind_value, a, b, out, strides, padding, dilation, groups);                                 \
  }

V3D_CONV_BINDING(kForward, ConvForward)
V3D_CONV_BINDING(kBackwardData, ConvBackwardData)
V3D_CONV_BINDING(kBackwardWeights, ConvBackwardWeights)

}  // namespace

#define V3D_CONV_HANDLER(symbol, impl)                                              \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, impl,                                       \
                                ffi::Ffi::Bind()                                    \
                                    .Arg<ffi::AnyBuffer>()                          \
                                    .Arg<ffi::AnyBuffer>()                          \
                                    .Ret<ffi::AnyBuffer>()                          \
                                    .Attr<ffi::Span<const int64_t>>("strides")      \
                                    .Attr<ffi::Span<const int64_t>>("padding")      \
                                    .Attr<ffi::Span<const int64_t>>("dilation")     \
                                    .Attr<int64_t>("groups"));

V3D_CONV_HANDLER(V3dOnednnConvForward, ConvForwardImpl)
V3D_CONV_HANDLER(V3dOnednnConvBackwardData, ConvBackwardDataImpl)
V3D_CONV_HANDLER(V3dOnednnConvBackwardWeights, ConvBackwardWeightsImpl)

extern "C" int V3dOnednnVersion() {
  const dnnl_version_t* v = dnnl_version();
  return static_cast<int>(v->major * 10000 + v->minor * 100 + v->patch);
}
