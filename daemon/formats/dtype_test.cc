#include "daemon/formats/dtype.h"

#include <limits>
#include <set>

#include "common/testing/status_matchers.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

TEST(DTypeTest, NamesAreUniqueAndFound) {
  std::set<std::string> names;
  for (const DTypeInfo& type : AllDTypes()) {
    EXPECT_TRUE(names.insert(std::string(type.name)).second) << type.name;
    EXPECT_EQ(FindDType(type.name), &type);
    EXPECT_GT(type.block_elements, 0u);
    EXPECT_GT(type.block_bytes, 0u);
  }
  EXPECT_EQ(FindDType("f32"), nullptr);  // Case matters.
  EXPECT_EQ(FindDType("Q4_0")->block_bytes, 18u);
  EXPECT_EQ(FindDType("F4")->block_elements, 2u);
}

TEST(ElementCountTest, ScalarsEmptyAndOverflow) {
  ASSERT_OK_AND_ASSIGN(uint64_t scalar, ElementCount({}));
  EXPECT_EQ(scalar, 1u);
  ASSERT_OK_AND_ASSIGN(uint64_t count, ElementCount({2, 3, 4}));
  EXPECT_EQ(count, 24u);
  EXPECT_THAT(
      ElementCount({kMax, 2}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overflows")));
}

TEST(ElementCountTest, AZeroDimensionIsEmptyEvenAfterHugeOnes) {
  // Found by the GGUF fuzzer: the product of the first two overflows, but
  // the tensor is empty.
  ASSERT_OK_AND_ASSIGN(uint64_t count,
                       ElementCount({491543146100, 8315179830362472448u, 0}));
  EXPECT_EQ(count, 0u);
}

TEST(ByteSizeTest, BlocksAndOverflow) {
  ASSERT_OK_AND_ASSIGN(uint64_t q4, ByteSize(*FindDType("Q4_0"), 64));
  EXPECT_EQ(q4, 36u);
  EXPECT_THAT(ByteSize(*FindDType("Q4_0"), 33),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("whole number of blocks")));
  EXPECT_THAT(
      ByteSize(*FindDType("F64"), kMax / 4),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overflows")));
}

}  // namespace
}  // namespace warmstart
