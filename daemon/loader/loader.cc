#include "daemon/loader/loader.h"

#include <utility>

#include "common/status_macros.h"
#include "daemon/loader/load_job.h"

namespace warmstart {

bool IsDeviceFull(const absl::Status& status) {
  return absl::IsResourceExhausted(status) &&
         status.GetPayload(kDeviceFullPayload).has_value();
}

absl::string_view ModelLayoutName(ModelLayout layout) {
  return layout == ModelLayout::kFileImage ? "file_image" : "packed";
}

absl::StatusOr<LoadPlan> Loader::Plan(const Manifest& manifest,
                                      const LoadOptions& options) const {
  WS_ASSIGN_OR_RETURN(
      LoadPlan plan, LoadPlan::Make(manifest, options.layout, options.alignment,
                                    pool_->slab_bytes(), options.read_bytes));
  WS_RETURN_IF_ERROR(plan.OpenFiles(options));
  return plan;
}

std::unique_ptr<LoadJob> Loader::NewJob(const LoadPlan& plan,
                                        const std::string& label,
                                        const LoadOptions& options) const {
  return std::make_unique<LoadJob>(engine_, pool_, &plan, label, options);
}

absl::StatusOr<LoadedModel> Loader::Load(const Manifest& manifest,
                                         const std::string& label,
                                         const LoadOptions& options) {
  WS_ASSIGN_OR_RETURN(LoadPlan plan, Plan(manifest, options));
  std::unique_ptr<LoadJob> job = NewJob(plan, label, options);
  WS_RETURN_IF_ERROR(job->Allocate(device_));
  WS_RETURN_IF_ERROR(job->Fill());
  WS_ASSIGN_OR_RETURN(std::vector<LoadedModel> models, job->Publish());
  return std::move(models[0]);
}

}  // namespace warmstart
