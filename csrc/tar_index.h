// Tar member indexing: byte ranges of every regular file in a tar archive.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace solo {

struct TarMember {
  std::string name;
  int64_t header_offset;  // where the member's (first) header block starts
  int64_t data_offset;    // where its bytes start
  int64_t size;           // its length in bytes
};

// Throws std::runtime_error naming the file on a truncated or corrupt archive.
std::vector<TarMember> index_tar(const std::string& path);

}  // namespace solo
