// libFuzzer target for the packed tensor table (common/tensor_table.h),
// which a client parses from the daemon's reply. Three uses of each input:
//  1. the input as a table: ParseTensorTable either fails with
//     InvalidArgument "tensor table: ..." or gives a view whose every
//     string and shape lies inside the input;
//  2. the input as tensors (names, dtypes, roles, shapes cut from its
//     bytes): encoding them and parsing the result gives them back;
//  3. that encoded table with some of its bytes overwritten by the input's
//     (a table that is almost right, which 1 rarely reaches): as 1.
// Violations abort().
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "common/check.h"
#include "common/tensor_table.h"
#include "common/utf8.h"

namespace warmstart {
namespace {

// Reads bytes off the front of the input; zeros once it is used up.
class Reader {
 public:
  explicit Reader(absl::string_view data) : data_(data) {}
  bool empty() const { return data_.empty(); }
  uint8_t Byte() {
    if (data_.empty()) return 0;
    const uint8_t b = static_cast<uint8_t>(data_[0]);
    data_.remove_prefix(1);
    return b;
  }
  absl::string_view Take(size_t n) {
    const absl::string_view taken = data_.substr(0, n);
    data_.remove_prefix(taken.size());
    return taken;
  }

 private:
  absl::string_view data_;
};

struct Tensor {
  std::string name, dtype, role;
  std::vector<uint64_t> shape;
  uint64_t nbytes = 0, offset = 0;
};

// Checks a parsed table against the bytes it came from: everything it
// gives lies inside them, strings end with their NUL.
void CheckView(const TensorTableView& view, absl::string_view bytes) {
  const char* begin = bytes.data();
  const char* end = bytes.data() + bytes.size();
  const auto inside = [begin, end](const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    return n == 0 || (c >= begin && c + n <= end);
  };
  for (size_t i = 0; i < view.size(); ++i) {
    for (absl::string_view s : {view.name(i), view.dtype(i), view.role(i)}) {
      WS_CHECK(inside(s.data(), s.size() + 1));
      WS_CHECK(s.data()[s.size()] == '\0');
    }
    const absl::Span<const uint64_t> shape = view.shape(i);
    WS_CHECK(inside(shape.data(), shape.size() * sizeof(uint64_t)));
    (void)view.nbytes(i);
    (void)view.offset(i);
  }
}

void ParseAnything(absl::string_view bytes) {
  absl::StatusOr<TensorTable> table = TensorTable::Parse(bytes);
  if (!table.ok()) {
    WS_CHECK(absl::IsInvalidArgument(table.status()));
    WS_CHECK(absl::StartsWith(table.status().message(), "tensor table: "));
    return;
  }
  // The view is of the table's own aligned copy; check it against a
  // second parse in place of that copy's bytes.
  std::vector<uint64_t> aligned(bytes.size() / 8 + 1);
  std::memcpy(aligned.data(), bytes.data(), bytes.size());
  const absl::string_view in_place(
      reinterpret_cast<const char*>(aligned.data()), bytes.size());
  absl::StatusOr<TensorTableView> view = ParseTensorTable(in_place);
  WS_CHECK(view.ok());
  WS_CHECK(view->size() == table->view().size());
  CheckView(*view, in_place);
}

// Cuts tensors from the input: each a length-prefixed name (any bytes),
// a dtype and role from short lists, up to 9 dims.
std::vector<Tensor> TensorsFrom(Reader& reader) {
  static const char* const kDtypes[] = {"F32", "BF16", "Q4_K", ""};
  static const char* const kRoles[] = {"", "parameter", "buffer"};
  std::vector<Tensor> tensors;
  while (!reader.empty() && tensors.size() < 64) {
    Tensor t;
    t.name = std::string(reader.Take(reader.Byte() % 40));
    t.dtype = kDtypes[reader.Byte() % 4];
    t.role = kRoles[reader.Byte() % 3];
    t.shape.resize(reader.Byte() % 10);
    for (uint64_t& d : t.shape) d = reader.Byte() * 0x0101010101ULL;
    t.nbytes = reader.Byte() * 0x10001ULL;
    t.offset = reader.Byte() * 0x100000001ULL;
    tensors.push_back(std::move(t));
  }
  return tensors;
}

bool NamesAreUtf8(const std::vector<Tensor>& tensors) {
  for (const Tensor& t : tensors) {
    if (FindInvalidUtf8(t.name) != absl::string_view::npos) return false;
  }
  return true;
}

}  // namespace
}  // namespace warmstart

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace warmstart;
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  ParseAnything(input);

  Reader reader(input);
  const std::vector<Tensor> tensors = TensorsFrom(reader);
  absl::StatusOr<std::string> encoded =
      EncodeTensorTable(tensors.size(), [&tensors](size_t i) {
        const Tensor& t = tensors[i];
        return TensorTableEntry{t.name,  t.dtype,  t.role,
                                t.shape, t.nbytes, t.offset};
      });
  WS_CHECK(encoded.ok());
  absl::StatusOr<TensorTable> table = TensorTable::Parse(*encoded);
  // The encoder stores any bytes; the parser refuses names not UTF-8.
  WS_CHECK(table.ok() == NamesAreUtf8(tensors));
  if (table.ok()) {
    const TensorTableView& view = table->view();
    WS_CHECK(view.size() == tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      WS_CHECK(view.name(i) == tensors[i].name);
      WS_CHECK(view.dtype(i) == tensors[i].dtype);
      WS_CHECK(view.role(i) == tensors[i].role);
      WS_CHECK(std::equal(view.shape(i).begin(), view.shape(i).end(),
                          tensors[i].shape.begin(), tensors[i].shape.end()));
      WS_CHECK(view.nbytes(i) == tensors[i].nbytes);
      WS_CHECK(view.offset(i) == tensors[i].offset);
    }
  }

  // The input's first bytes say where to overwrite the encoded table.
  std::string damaged = *encoded;
  Reader edits(input);
  for (int n = edits.Byte() % 8; n > 0 && !damaged.empty(); --n) {
    const size_t at = (edits.Byte() * 256u + edits.Byte()) % damaged.size();
    damaged[at] = static_cast<char>(edits.Byte());
  }
  if (edits.Byte() % 4 == 0)
    damaged.resize(edits.Byte() * 4u % (damaged.size() + 1));
  ParseAnything(damaged);
  return 0;
}
