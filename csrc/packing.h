// Packing variable-length samples into fixed-length sequences (see megatron_solo/data/packing.py for the
// algorithm; the pure-Python reference there must give identical output).
#pragma once

#include <cstdint>
#include <vector>

namespace solo {

struct PackOutput {
  std::vector<int64_t> pack_ptr;     // packs in CSR: items pack_ptr[p] .. pack_ptr[p+1]
  std::vector<int64_t> item_sample;  // index into the input lengths
  std::vector<int64_t> item_start;   // first token of the piece within its sample
  std::vector<int64_t> item_end;     // one past its last token
  std::vector<int64_t> dropped;      // samples dropped by the overflow policy or unsplittable
  int64_t num_split = 0;
  int64_t dropped_tokens = 0;
};

// Fisher-Yates permutation of 0..n-1 driven by splitmix64 seeded from (seed, epoch).
std::vector<int64_t> shuffled_order(int64_t n, uint64_t seed, int64_t epoch);

// lengths[n]; block_ptr[n+1] / block_start / block_end: image-block token intervals of each sample
// (sorted, non-overlapping), inside which a sample is never cut.
PackOutput pack_samples(const int64_t* lengths, int64_t n, int64_t seq_length, uint64_t seed, int64_t epoch,
                        const int64_t* block_ptr, const int64_t* block_start, const int64_t* block_end,
                        bool split, int64_t open_bins, bool shuffle);

}  // namespace solo
