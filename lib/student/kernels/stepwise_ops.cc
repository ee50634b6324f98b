// Stepwise's own TensorFlow kernels, loaded into the process beside tfjs-node's binding (loadStepwiseOps in
// lib/student/tf-native.ts).
//
// TensorFlow's CPU kernels in the pip wheel are built for a baseline x86 (AVX without FMA) and each does one
// elementwise pass; a training step spends much of what is not matrix products in such passes and in the thread
// hand-offs around them. A kernel here fuses passes that TensorFlow runs separately, is compiled for the machine's
// vector width (function multiversioning: AVX-512, AVX2, baseline), and runs on TensorFlow's own intra-op threads.
// Every kernel is elementwise with no reductions across elements and is built without FMA contraction, so each
// clone computes the same IEEE operations and the results do not depend on the machine's vector width or threads.
//
// Built against the headers and libtensorflow_framework of the pinned wheel (infra/tfjs-native.ts) and loaded with
// process.dlopen, which runs the registrations below; the N-API stub at the end makes it a valid Node module.

#define EIGEN_USE_THREADS

#include <cmath>
#include <cstdint>

#include <node_api.h>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/training_op_helpers.h"
#include "tensorflow/core/util/work_sharder.h"

namespace stepwise {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using CPUDevice = Eigen::ThreadPoolDevice;

// ---------------------------------------------------------------------------------------------------------------
// StepwiseApplyAdamW: torch's AdamW for one variable, with the gradient's clip coefficient, in one pass in place.
//
// TensorFlow's way is three passes: a Mul scaling every gradient by the clip coefficient, an assign for the
// decoupled weight decay, and ResourceApplyAdam. This reads the gradient, the weight and both moments once and
// writes them once, with ResourceApplyAdam's formulas and evaluation order:
//   g = grad·scale;  m += (g − m)(1 − β1);  v += (g² − v)(1 − β2);  var = var·decay − (m·step)/(√v + ε)
// where step = lr·√(1 − β2^t)/(1 − β1^t), ε is torch's eps times √(1 − β2^t), and decay = 1 − lr·weight_decay.
// The variables are updated under TensorFlow's variable locks and copied first when their buffer is shared, as
// ResourceApplyAdam does.

REGISTER_OP("StepwiseApplyAdamW")
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("grad: float")
    .Input("hyper: float")  // [grad_scale, beta1, beta2, epsilon, step_size, decay]
    .Attr("use_locking: bool = false")
    .SetIsStateful()
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext*) { return absl::OkStatus(); });

constexpr int kHyper = 6;

struct AdamArgs {
  float* var;
  float* m;
  float* v;
  const float* grad;
  float scale, beta1, beta2, epsilon, step, decay;
};

__attribute__((target_clones("avx512f", "avx2", "default"))) void AdamRange(const AdamArgs& a, int64_t begin,
                                                                             int64_t end) {
  const float keep1 = 1.0f - a.beta1;
  const float keep2 = 1.0f - a.beta2;
  for (int64_t i = begin; i < end; ++i) {
    const float g = a.grad[i] * a.scale;
    const float m = a.m[i] + (g - a.m[i]) * keep1;
    const float v = a.v[i] + (g * g - a.v[i]) * keep2;
    a.m[i] = m;
    a.v[i] = v;
    a.var[i] = a.var[i] * a.decay - (m * a.step) / (std::sqrt(v) + a.epsilon);
  }
}

class ApplyAdamWOp : public OpKernel {
 public:
  explicit ApplyAdamWOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("use_locking", &use_locking_));
  }

  void Compute(OpKernelContext* context) override {
    constexpr bool kSparse = false;
    auto locks = ::tensorflow::MaybeLockVariableInputMutexesInOrder<CPUDevice, float>(context, use_locking_,
                                                                                      kSparse, {0, 1, 2});
    Tensor var, m, v;
    OP_REQUIRES_OK(context, ::tensorflow::GetInputTensorFromVariable<CPUDevice, float>(context, 0, use_locking_,
                                                                                       kSparse, &var));
    OP_REQUIRES_OK(context, ::tensorflow::GetInputTensorFromVariable<CPUDevice, float>(context, 1, use_locking_,
                                                                                       kSparse, &m));
    OP_REQUIRES_OK(context, ::tensorflow::GetInputTensorFromVariable<CPUDevice, float>(context, 2, use_locking_,
                                                                                       kSparse, &v));
    const Tensor& grad = context->input(3);
    const Tensor& hyper = context->input(4);
    OP_REQUIRES(context, var.IsInitialized() && m.IsInitialized() && v.IsInitialized(),
                absl::FailedPreconditionError("StepwiseApplyAdamW: a variable is not initialised"));
    OP_REQUIRES(context, var.shape().IsSameSize(m.shape()) && var.shape().IsSameSize(v.shape()),
                absl::InvalidArgumentError("StepwiseApplyAdamW: var, m and v differ in shape: " +
                                           var.shape().DebugString() + ", " + m.shape().DebugString() + ", " +
                                           v.shape().DebugString()));
    OP_REQUIRES(context, var.shape().IsSameSize(grad.shape()),
                absl::InvalidArgumentError("StepwiseApplyAdamW: grad has shape " + grad.shape().DebugString() +
                                           ", var " + var.shape().DebugString()));
    OP_REQUIRES(context, hyper.NumElements() == kHyper,
                absl::InvalidArgumentError("StepwiseApplyAdamW: hyper has " + std::to_string(hyper.NumElements()) +
                                           " values, expected 6"));
    const float* h = hyper.flat<float>().data();
    const AdamArgs args{var.flat<float>().data(), m.flat<float>().data(), v.flat<float>().data(),
                        grad.flat<float>().data(), h[0], h[1], h[2], h[3], h[4], h[5]};
    const auto* workers = context->device()->tensorflow_cpu_worker_threads();
    // Cost per element in cycles, for the sharder's block size: a divide and a square root dominate.
    constexpr int64_t kCycles = 20;
    ::tensorflow::Shard(workers->num_threads, workers->workers, grad.NumElements(), kCycles,
                        [&args](int64_t begin, int64_t end) { AdamRange(args, begin, end); });
  }

 private:
  bool use_locking_ = false;
};

REGISTER_KERNEL_BUILDER(Name("StepwiseApplyAdamW").Device(::tensorflow::DEVICE_CPU), ApplyAdamWOp);

// ---------------------------------------------------------------------------------------------------------------
// Node module: nothing to export; loading the library is what registers the kernels.

napi_value Init(napi_env, napi_value exports) { return exports; }

}  // namespace
}  // namespace stepwise

NAPI_MODULE(NODE_GYP_MODULE_NAME, stepwise::Init)
