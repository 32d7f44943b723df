#include "client/model_json.h"

#include "gtest/gtest.h"

namespace warmstart {
namespace client {
namespace {

TEST(ModelJsonTest, CarriesEveryFieldTheDaemonReports) {
  v1::ModelStatus model;
  model.set_name("llama");
  model.set_path("/models/llama");
  model.set_state(v1::FAILED);
  model.set_error("read /models/llama/a.safetensors: I/O error");
  model.set_error_code(8);
  model.set_bytes_loaded(10);
  model.set_bytes_total(20);
  model.set_leases(2);
  model.set_pinned(true);
  model.add_devices("GPU-0");
  model.set_tensor_count(3);
  model.set_layout(v1::FILE_IMAGE);
  const nlohmann::ordered_json json = ModelJson(model);
  EXPECT_EQ(json.at("name"), "llama");
  EXPECT_EQ(json.at("path"), "/models/llama");
  EXPECT_EQ(json.at("state"), "failed");
  EXPECT_EQ(json.at("error"), "read /models/llama/a.safetensors: I/O error");
  EXPECT_EQ(json.at("error_code"), 8);
  EXPECT_EQ(json.at("bytes_loaded"), 10);
  EXPECT_EQ(json.at("bytes_total"), 20);
  EXPECT_EQ(json.at("leases"), 2);
  EXPECT_EQ(json.at("pinned"), true);
  EXPECT_EQ(json.at("devices"), nlohmann::ordered_json::array({"GPU-0"}));
  EXPECT_EQ(json.at("tensor_count"), 3);
  EXPECT_EQ(json.at("layout"), "file_image");
}

TEST(ModelJsonTest, NamesStatesAndLayouts) {
  EXPECT_STREQ(StateName(v1::LOADING), "loading");
  EXPECT_STREQ(StateName(v1::READY), "ready");
  EXPECT_STREQ(StateName(v1::UNLOADING), "unloading");
  EXPECT_STREQ(LayoutName(v1::PACKED), "packed");
}

}  // namespace
}  // namespace client
}  // namespace warmstart
