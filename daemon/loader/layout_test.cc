#include "daemon/loader/layout.h"

#include "common/testing/status_matchers.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;

TensorEntry Tensor(std::string name, std::string dtype, uint64_t offset,
                   uint64_t nbytes) {
  TensorEntry tensor;
  tensor.name = std::move(name);
  tensor.dtype = std::move(dtype);
  tensor.shape = {nbytes};
  tensor.nbytes = nbytes;
  tensor.offset = offset;
  tensor.stored_bytes = nbytes;
  return tensor;
}

Manifest OneFile(std::vector<TensorEntry> tensors) {
  Manifest manifest;
  manifest.files.emplace_back();
  manifest.files[0].path = "/m.safetensors";
  manifest.files[0].tensors = std::move(tensors);
  return manifest;
}

TEST(LayoutArenaTest, AlignsEveryTensorWhateverTheFileDid) {
  Manifest manifest =
      OneFile({Tensor("a", "U8", 13, 3), Tensor("b", "F64", 16, 8),
               Tensor("c", "C128", 24, 16)});
  ASSERT_OK_AND_ASSIGN(ArenaLayout layout, LayoutArena(manifest, 8));
  ASSERT_EQ(layout.placements.size(), 3u);
  EXPECT_EQ(layout.placements[0].arena_offset, 0u);
  EXPECT_EQ(layout.placements[1].arena_offset, 8u);
  EXPECT_EQ(layout.placements[2].arena_offset, 16u);  // C128 needs 16.
  EXPECT_EQ(layout.total_bytes, 32u);
  ASSERT_OK_AND_ASSIGN(ArenaLayout wide, LayoutArena(manifest, 256));
  EXPECT_EQ(wide.placements[2].arena_offset, 512u);
}

TEST(LayoutArenaTest, UnknownDtypeIsRefused) {
  EXPECT_THAT(LayoutArena(OneFile({Tensor("x", "Q99", 0, 1)}), 256),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("Q99")));
}

TEST(PlanReadsTest, CoversEveryStoredByteOnceWithinTheChunkLimit) {
  Manifest manifest =
      OneFile({Tensor("small", "U8", 100, 10), Tensor("big", "U8", 110, 1000),
               Tensor("tail", "U8", 1200, 50)});
  manifest.files[0].tensors.push_back(Tensor("meta", "U8", 0, 64));
  manifest.files[0].tensors.back().stored_bytes = 0;
  ASSERT_OK_AND_ASSIGN(ArenaLayout layout, LayoutArena(manifest, 1));
  ASSERT_OK_AND_ASSIGN(auto chunks, PlanReads(manifest, layout, 256));
  std::vector<uint64_t> covered(4, 0);
  uint64_t last_end = 0;
  for (const ReadChunk& chunk : chunks) {
    EXPECT_LE(chunk.length, 256u);
    EXPECT_GE(chunk.file_offset, last_end);  // In file order, no overlap.
    last_end = chunk.file_offset + chunk.length;
    for (const Piece& piece : chunk.pieces) {
      const TensorEntry& tensor = manifest.files[0].tensors[piece.placement];
      EXPECT_EQ(chunk.file_offset + piece.chunk_offset,
                tensor.offset + piece.tensor_offset);
      EXPECT_EQ(piece.tensor_offset, covered[piece.placement]);
      covered[piece.placement] += piece.length;
    }
  }
  EXPECT_EQ(covered, (std::vector<uint64_t>{10, 1000, 50, 0}));
}

TEST(PlanReadsTest, EncryptedTensorsAreCutAtCipherChunks) {
  TensorEntry secret = Tensor("secret", "U8", 0, 1000);
  secret.encryption.emplace();
  secret.encryption->chunk_size = 300;
  Manifest manifest = OneFile({secret});
  ASSERT_OK_AND_ASSIGN(ArenaLayout layout, LayoutArena(manifest, 1));
  ASSERT_OK_AND_ASSIGN(auto chunks, PlanReads(manifest, layout, 700));
  std::vector<uint64_t> starts;
  for (const ReadChunk& chunk : chunks) {
    for (const Piece& piece : chunk.pieces) {
      EXPECT_EQ(piece.tensor_offset % 300, 0u);
      EXPECT_TRUE(piece.length % 300 == 0 ||
                  piece.tensor_offset + piece.length == 1000);
      starts.push_back(piece.tensor_offset);
    }
  }
  EXPECT_EQ(starts, (std::vector<uint64_t>{0, 600}));
  EXPECT_THAT(PlanReads(manifest, layout, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("0")));
  EXPECT_THAT(PlanReads(manifest, layout, 299),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("do not fit staging slabs")));
}

}  // namespace
}  // namespace warmstart
