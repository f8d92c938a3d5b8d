// Index the members of a tar archive without reading their contents.
// Handles ustar headers, GNU long names ('L') and pax extended headers ('x').
#include "tar_index.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace solo {
namespace {

constexpr int64_t kBlock = 512;

int64_t parse_octal(const char* field, size_t width, const std::string& path, int64_t at) {
  // GNU base-256 encoding for sizes >= 8 GiB: high bit of the first byte set.
  if (static_cast<unsigned char>(field[0]) & 0x80) {
    int64_t value = static_cast<unsigned char>(field[0]) & 0x7f;
    for (size_t i = 1; i < width; ++i) value = (value << 8) | static_cast<unsigned char>(field[i]);
    return value;
  }
  int64_t value = 0;
  size_t i = 0;
  while (i < width && (field[i] == ' ' || field[i] == '\0')) ++i;
  for (; i < width && field[i] >= '0' && field[i] <= '7'; ++i) value = value * 8 + (field[i] - '0');
  for (; i < width; ++i) {
    if (field[i] != ' ' && field[i] != '\0') {
      throw std::runtime_error(path + ": corrupt tar header at byte " + std::to_string(at) +
                               " (bad octal field)");
    }
  }
  return value;
}

bool all_zero(const char* block) {
  for (int64_t i = 0; i < kBlock; ++i)
    if (block[i] != 0) return false;
  return true;
}

void check_sum(const char* h, const std::string& path, int64_t at) {
  int64_t stored = parse_octal(h + 148, 8, path, at);
  int64_t sum = 0;
  for (int64_t i = 0; i < kBlock; ++i)
    sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(h[i]);
  if (sum != stored)
    throw std::runtime_error(path + ": corrupt tar header at byte " + std::to_string(at) +
                             " (checksum mismatch)");
}

std::string cstr(const char* field, size_t width) {
  size_t n = 0;
  while (n < width && field[n] != '\0') ++n;
  return std::string(field, n);
}

// The "path" record of a pax header ("LEN path=VALUE\n" records).
std::string pax_path(const std::string& data) {
  size_t pos = 0;
  std::string found;
  while (pos < data.size()) {
    size_t space = data.find(' ', pos);
    if (space == std::string::npos) break;
    size_t len = std::stoul(data.substr(pos, space - pos));
    if (len == 0 || pos + len > data.size()) break;
    std::string record = data.substr(space + 1, len - (space - pos) - 2);
    if (record.rfind("path=", 0) == 0) found = record.substr(5);
    pos += len;
  }
  return found;
}

}  // namespace

std::vector<TarMember> index_tar(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open tar file");
  in.seekg(0, std::ios::end);
  const int64_t file_size = in.tellg();
  in.seekg(0, std::ios::beg);

  std::vector<TarMember> members;
  std::string pending_name;
  char header[kBlock];
  int64_t at = 0;
  bool ended = false;
  while (at + kBlock <= file_size) {
    in.seekg(at);
    in.read(header, kBlock);
    if (all_zero(header)) {
      ended = true;
      break;
    }
    check_sum(header, path, at);
    const int64_t size = parse_octal(header + 124, 12, path, at);
    const char type = header[156];
    const int64_t data_at = at + kBlock;
    const int64_t padded = (size + kBlock - 1) / kBlock * kBlock;
    if (data_at + size > file_size)
      throw std::runtime_error(path + ": truncated tar: member at byte " + std::to_string(at) +
                               " needs " + std::to_string(size) + " bytes, file ends at " +
                               std::to_string(file_size));
    if (type == 'L' || type == 'x') {
      std::string data(static_cast<size_t>(size), '\0');
      in.seekg(data_at);
      in.read(&data[0], size);
      pending_name = (type == 'L') ? cstr(data.data(), data.size()) : pax_path(data);
    } else if (type == 'g') {
      // global pax header: carries no member
    } else {
      std::string name = pending_name;
      if (name.empty()) {
        std::string prefix = (std::memcmp(header + 257, "ustar", 5) == 0) ? cstr(header + 345, 155) : "";
        name = cstr(header, 100);
        if (!prefix.empty()) name = prefix + "/" + name;
      }
      pending_name.clear();
      if (type == '0' || type == '\0' || type == '7')
        members.push_back(TarMember{name, at, data_at, size});
    }
    at = data_at + padded;
  }
  if (!ended && at != file_size)
    throw std::runtime_error(path + ": truncated tar: " + std::to_string(file_size - at) +
                             " stray bytes at the end, no end-of-archive marker");
  if (!ended && members.empty() && file_size > 0)
    throw std::runtime_error(path + ": not a tar file");
  return members;
}

}  // namespace solo
