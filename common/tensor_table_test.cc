#include "common/tensor_table.h"

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;

// A tensor owning its fields, for building and comparing tables.
struct Tensor {
  std::string name;
  std::string dtype;
  std::string role;
  std::vector<uint64_t> shape;
  uint64_t nbytes = 0;
  uint64_t offset = 0;
};

std::string Encode(const std::vector<Tensor>& tensors) {
  absl::StatusOr<std::string> table =
      EncodeTensorTable(tensors.size(), [&](size_t i) {
        const Tensor& t = tensors[i];
        return TensorTableEntry{t.name,  t.dtype,  t.role,
                                t.shape, t.nbytes, t.offset};
      });
  EXPECT_OK(table);
  return table.ok() ? *table : std::string();
}

std::vector<Tensor> Decode(const TensorTableView& view) {
  std::vector<Tensor> tensors;
  for (size_t i = 0; i < view.size(); ++i) {
    Tensor t;
    t.name = std::string(view.name(i));
    t.dtype = std::string(view.dtype(i));
    t.role = std::string(view.role(i));
    t.shape.assign(view.shape(i).begin(), view.shape(i).end());
    t.nbytes = view.nbytes(i);
    t.offset = view.offset(i);
    // Each string is a C string in place.
    EXPECT_EQ(view.name(i).data()[view.name(i).size()], '\0');
    EXPECT_EQ(view.dtype(i).data()[view.dtype(i).size()], '\0');
    EXPECT_EQ(view.role(i).data()[view.role(i).size()], '\0');
    tensors.push_back(std::move(t));
  }
  return tensors;
}

void ExpectSame(const std::vector<Tensor>& got,
                const std::vector<Tensor>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(got[i].name, want[i].name);
    EXPECT_EQ(got[i].dtype, want[i].dtype);
    EXPECT_EQ(got[i].role, want[i].role);
    EXPECT_EQ(got[i].shape, want[i].shape);
    EXPECT_EQ(got[i].nbytes, want[i].nbytes);
    EXPECT_EQ(got[i].offset, want[i].offset);
  }
}

std::vector<Tensor> OddTensors() {
  std::vector<uint64_t> many_dims;
  for (uint64_t d = 1; d <= 64; ++d) many_dims.push_back(d % 3 + 1);
  return {
      {"model.layers.0.q_proj.weight", "BF16", "", {4096, 4096}, 33554432, 0},
      // Two- to four-byte UTF-8, and a name that is all of it.
      {"modèle.日本.\xf0\x9f\x98\x80", "F32", "parameter", {3}, 12, 33554432},
      {"", "F16", "buffer", {2, 2}, 8, 33554448},
      // 0-dim (a scalar) and 0-byte tensors.
      {"scalar", "F64", "", {}, 8, 33554456},
      {"empty", "F32", "", {0, 7}, 0, 33554464},
      {"empty_1d", "U8", "state_dict", {0}, 0, 33554464},
      {"many_dims", "I8", "", many_dims, 1, 33554464},
      // A repeated name, and a name with a NUL inside (the table keeps
      // it: lengths, not terminators, delimit the strings).
      {"scalar", "F64", "", {}, 8, 33554472},
      {std::string("a\0b", 3), "Q4_K", "", {256}, 144, 33554480},
      {std::string(1000, 'n'), "F32", "parameter", {1, 1, 1}, 4, 0},
  };
}

TEST(TensorTableTest, RoundTripsOddNamesShapesAndSizes) {
  const std::vector<Tensor> tensors = OddTensors();
  const std::string bytes = Encode(tensors);
  ASSERT_OK_AND_ASSIGN(TensorTable table, TensorTable::Parse(bytes));
  ExpectSame(Decode(table.view()), tensors);
  // Shapes are read in place, aligned for uint64_t.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(table.view().shape(0).data()) % 8, 0u);
}

TEST(TensorTableTest, StoresEachDtypeAndRoleOnce) {
  std::vector<Tensor> tensors;
  for (int i = 0; i < 100; ++i) {
    tensors.push_back({"t" + std::to_string(i),
                       "BFLOAT16_LONG_NAME",
                       "parameter_with_a_long_role",
                       {2},
                       4,
                       0});
  }
  const std::string bytes = Encode(tensors);
  // Header, records, one dim each, then names with NULs and one copy each
  // of the dtype and the role.
  uint64_t names = 0;
  for (const Tensor& t : tensors) names += t.name.size() + 1;
  EXPECT_EQ(bytes.size(), 40 + 100 * 48 + 100 * 8 + names + 19 + 27);
}

TEST(TensorTableTest, AnEmptyModelIsAHeaderAlone) {
  const std::string bytes = Encode({});
  EXPECT_EQ(bytes.size(), 40u);
  ASSERT_OK_AND_ASSIGN(TensorTable table, TensorTable::Parse(bytes));
  EXPECT_EQ(table.view().size(), 0u);
  EXPECT_EQ(TensorTable().view().size(), 0u);
}

TEST(TensorTableTest, RoundTripsRandomTables) {
  std::mt19937_64 random(17);
  // Code points from every UTF-8 length, none a surrogate.
  const std::vector<std::string> pieces = {"a",
                                           "Z",
                                           ".",
                                           "_",
                                           "é",
                                           "Ω",
                                           "日",
                                           "€",
                                           "\xf0\x9f\x98\x80",
                                           "\xf4\x8f\xbf\xbf"};
  for (int round = 0; round < 20; ++round) {
    std::vector<Tensor> tensors(random() % 300);
    for (Tensor& t : tensors) {
      for (size_t n = random() % 12; n > 0; --n) {
        t.name += pieces[random() % pieces.size()];
      }
      t.dtype = random() % 2 ? "F32" : "BF16";
      t.role = random() % 3 == 0 ? "" : "parameter";
      t.shape.resize(random() % 6);
      for (uint64_t& d : t.shape) d = random() % 5000;
      t.nbytes = random();
      t.offset = random();
    }
    const std::string bytes = Encode(tensors);
    ASSERT_OK_AND_ASSIGN(TensorTable table, TensorTable::Parse(bytes));
    ExpectSame(Decode(table.view()), tensors);
  }
}

TEST(TensorTableTest, ParseCopiesUnalignedBytesAndTheViewRefusesThem) {
  const std::vector<Tensor> tensors = OddTensors();
  const std::string bytes = Encode(tensors);
  // The same bytes one past an aligned address.
  std::vector<uint64_t> words(bytes.size() / 8 + 2);
  char* unaligned = reinterpret_cast<char*>(words.data()) + 1;
  std::memcpy(unaligned, bytes.data(), bytes.size());
  const absl::string_view shifted(unaligned, bytes.size());
  EXPECT_THAT(ParseTensorTable(shifted),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("not 8-byte aligned")));
  ASSERT_OK_AND_ASSIGN(TensorTable table, TensorTable::Parse(shifted));
  ExpectSame(Decode(table.view()), tensors);
  // The aligned original is read in place.
  const absl::string_view aligned(reinterpret_cast<char*>(words.data()),
                                  bytes.size());
  std::memcpy(words.data(), bytes.data(), bytes.size());
  ASSERT_OK_AND_ASSIGN(TensorTableView view, ParseTensorTable(aligned));
  EXPECT_GE(view.name(0).data(), aligned.data());
  EXPECT_LT(view.name(0).data(), aligned.data() + aligned.size());
}

// Later versions may add header fields and record fields at the end; a
// version-1 reader steps over them by header_size and record_size.
TEST(TensorTableTest, ReadsWiderHeadersAndRecords) {
  const std::vector<Tensor> tensors = OddTensors();
  const std::string narrow = Encode(tensors);
  const size_t count = tensors.size();
  std::string wide = narrow.substr(0, 40) + std::string(8, '\x7e');
  for (size_t i = 0; i < count; ++i) {
    wide += narrow.substr(40 + i * 48, 48) + std::string(16, '\x7e');
  }
  wide += narrow.substr(40 + count * 48);
  const uint32_t header_size = 48, record_size = 64;
  std::memcpy(&wide[8], &header_size, 4);
  std::memcpy(&wide[12], &record_size, 4);
  ASSERT_OK_AND_ASSIGN(TensorTable table, TensorTable::Parse(wide));
  ExpectSame(Decode(table.view()), tensors);
}

// Offsets of the header's and of record 0's fields, for the mutations.
constexpr size_t kMagic = 0, kVersion = 4, kHeaderSize = 8, kRecordSize = 12,
                 kCount = 16, kDimCount = 24, kStringBytes = 32;
constexpr size_t kRecord0 = 40;

template <typename T>
void Set(std::string& bytes, size_t at, T value) {
  std::memcpy(&bytes[at], &value, sizeof(value));
}
template <typename T>
T Read(const std::string& bytes, size_t at) {
  T value;
  std::memcpy(&value, &bytes[at], sizeof(value));
  return value;
}

void ExpectRejected(const std::string& bytes, const std::string& why) {
  EXPECT_THAT(TensorTable::Parse(bytes),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(why)));
}

TEST(TensorTableTest, RejectsEveryTruncation) {
  const std::string bytes = Encode(OddTensors());
  for (size_t size = 0; size < bytes.size(); ++size) {
    SCOPED_TRACE(size);
    EXPECT_THAT(TensorTable::Parse(bytes.substr(0, size)),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("tensor table: ")));
  }
  ExpectRejected(bytes.substr(0, 39), "39 bytes, fewer than the 40");
  ExpectRejected(bytes + "x", "string_bytes: ");
}

TEST(TensorTableTest, RejectsBadHeaders) {
  const std::string good = Encode(OddTensors());
  std::string bad = good;
  Set<uint32_t>(bad, kMagic, 0x54545358);
  ExpectRejected(bad, "magic: 0x54545358");
  bad = good;
  Set<uint32_t>(bad, kVersion, 2);
  ExpectRejected(bad, "version: 2");
  for (uint32_t size : {0u, 32u, 44u, 0xfffffff8u}) {
    bad = good;
    Set<uint32_t>(bad, kHeaderSize, size);
    ExpectRejected(bad, "header_size: " + std::to_string(size));
  }
  for (uint32_t size : {0u, 40u, 52u}) {
    bad = good;
    Set<uint32_t>(bad, kRecordSize, size);
    ExpectRejected(bad, "record_size: " + std::to_string(size));
  }
}

TEST(TensorTableTest, RejectsCountsThatDoNotAddUp) {
  const std::string good = Encode(OddTensors());
  const uint64_t count = Read<uint64_t>(good, kCount);
  const uint64_t dims = Read<uint64_t>(good, kDimCount);
  const uint64_t strings = Read<uint64_t>(good, kStringBytes);
  std::string bad = good;
  // count x 48 wraps around to a small number in 64 bits.
  Set<uint64_t>(bad, kCount, (uint64_t{1} << 60) + count);
  ExpectRejected(bad, "tensor_count: ");
  bad = good;
  Set<uint64_t>(bad, kCount, count + 1);
  ExpectRejected(bad, "");
  bad = good;
  Set<uint64_t>(bad, kCount, count - 1);
  ExpectRejected(bad, "");
  bad = good;
  Set<uint64_t>(bad, kDimCount, ~uint64_t{0});
  ExpectRejected(bad, "dim_count: ");
  bad = good;
  Set<uint64_t>(bad, kDimCount, dims + 1);
  ExpectRejected(bad, "string_bytes: ");
  bad = good;
  Set<uint64_t>(bad, kStringBytes, strings - 1);
  ExpectRejected(bad, "string_bytes: ");
}

TEST(TensorTableTest, RejectsStringsOutsideTheirAreaOrUnterminated) {
  const std::string good = Encode(OddTensors());
  const uint64_t strings = Read<uint64_t>(good, kStringBytes);
  const uint32_t name_offset = Read<uint32_t>(good, kRecord0 + 16);
  const uint32_t name_size = Read<uint32_t>(good, kRecord0 + 20);
  std::string bad = good;
  Set<uint32_t>(bad, kRecord0 + 16, static_cast<uint32_t>(strings));
  ExpectRejected(bad, "tensor 0: name (offset " + std::to_string(strings));
  bad = good;
  // offset + size wraps in 32 bits; the check adds in 64.
  Set<uint32_t>(bad, kRecord0 + 16, 0xffffffffu);
  Set<uint32_t>(bad, kRecord0 + 20, 2);
  ExpectRejected(bad, "runs past the string area");
  bad = good;
  Set<uint32_t>(bad, kRecord0 + 20, name_size + 1);
  ExpectRejected(bad, "tensor 0: name (offset " + std::to_string(name_offset) +
                          ", size " + std::to_string(name_size + 1) +
                          ") is not followed by a NUL");
  bad = good;
  Set<uint32_t>(bad, kRecord0 + 24, 0xfffffff0u);  // dtype_offset
  ExpectRejected(bad, "tensor 0: dtype");
  bad = good;
  Set<uint32_t>(bad, kRecord0 + 36, 1000);  // role_size
  ExpectRejected(bad, "tensor 0: role");
  // Tensor 1's name starts with "è" (2 bytes): one byte in is inside it.
  const size_t record1 = kRecord0 + 48;
  bad = good;
  Set<uint32_t>(bad, record1 + 16, Read<uint32_t>(good, record1 + 16) + 4);
  Set<uint32_t>(bad, record1 + 20, Read<uint32_t>(good, record1 + 20) - 4);
  ExpectRejected(bad, "tensor 1: name (offset");
  ExpectRejected(bad, "starts inside a UTF-8 sequence");
}

TEST(TensorTableTest, RejectsStringsThatAreNotUtf8) {
  std::string bad = Encode(OddTensors());
  const uint32_t name_offset = Read<uint32_t>(bad, kRecord0 + 16);
  const size_t strings_at = bad.size() - Read<uint64_t>(bad, kStringBytes);
  bad[strings_at + name_offset] = '\xff';
  ExpectRejected(bad, "string area: byte " + std::to_string(name_offset) +
                          " is not UTF-8");
}

TEST(TensorTableTest, RejectsShapesOutsideTheDims) {
  const std::string good = Encode(OddTensors());
  const uint64_t dims = Read<uint64_t>(good, kDimCount);
  std::string bad = good;
  Set<uint32_t>(bad, kRecord0 + 40, static_cast<uint32_t>(dims) - 1);
  ExpectRejected(bad, "tensor 0: shape_index " + std::to_string(dims - 1) +
                          " + ndim 2 runs past the " + std::to_string(dims) +
                          " dimensions");
  bad = good;
  Set<uint32_t>(bad, kRecord0 + 40, 0xffffffffu);
  Set<uint32_t>(bad, kRecord0 + 44, 0xffffffffu);
  ExpectRejected(bad, "tensor 0: shape_index 4294967295");
}

}  // namespace
}  // namespace warmstart
