#include "resource_check.hpp"

#include <dirent.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <string>

namespace ctxmgr::testing {

std::map<int, std::string> open_descriptors() {
    std::map<int, std::string> result;
    DIR* dir = ::opendir("/proc/self/fd");
    if (dir == nullptr) return result;
    const int own = ::dirfd(dir);
    while (const dirent* entry = ::readdir(dir)) {
        char* end = nullptr;
        const long fd = std::strtol(entry->d_name, &end, 10);
        if (end == entry->d_name || *end != '\0' || fd == own) continue;
        char target[PATH_MAX];
        const std::string link = std::string("/proc/self/fd/") + entry->d_name;
        const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
        result.emplace(static_cast<int>(fd),
                       n >= 0 ? std::string(target, static_cast<std::size_t>(n)) : "?");
    }
    ::closedir(dir);
    return result;
}

std::string describe_new_descriptors(const std::map<int, std::string>& before,
                                     const std::map<int, std::string>& after) {
    std::string out;
    for (const auto& [fd, target] : after) {
        const auto old = before.find(fd);
        if (old != before.end() && old->second == target) continue;
        out += "fd " + std::to_string(fd) + " -> " + target + '\n';
    }
    return out;
}

}  // namespace ctxmgr::testing
