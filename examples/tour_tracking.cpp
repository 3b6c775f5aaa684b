// Tour chapter 60: the leak tracker. A resource that is forgotten, and one that is held too
// long, each reported with the line that acquired it.
#include <ctxmgr/ctxmgr.hpp>

#include <chrono>
#include <memory>
#include <source_location>
#include <sstream>
#include <string>
#include <thread>

#include "tour.hpp"

namespace {

using namespace std::chrono_literals;
using tour::say;

// A user type that takes part in the tracking: it holds a ctxmgr::tracked, given the
// caller's line, as every resource of the library does.
class connection {
  public:
    explicit connection(std::string name,
                        std::source_location where = std::source_location::current())
        : registration_("connection", '"' + name + '"', where) {}
    void close() noexcept { registration_.release(); }

  private:
    [[no_unique_address]] ctxmgr::tracked registration_;
};

void tracking_chapter() {
    if (!ctxmgr::tracking_enabled) {
        say("this build has leak tracking compiled out (CTXMGR_TRACKING=OFF): nothing registers");
        return;
    }
    say("a resource that is never closed is listed with the line that acquired it:");
    std::unique_ptr<connection> forgotten(new connection("orders-db"));
    std::ostringstream live;
    ctxmgr::report_live(live);
    say(live.str());

    say("");
    say("expect_no_leaks turns a resource left open inside its block into an error:");
    tour::show_code("expect_no_leaks");
    // tour: expect_no_leaks
    std::unique_ptr<connection> left_open;
    try {
        ctxmgr::with(ctxmgr::expect_no_leaks(), [&] { left_open.reset(new connection("cache")); });
    } catch (const ctxmgr::leak_error&) {
        tour::say_exception(std::current_exception());
    }
    // tour: end
    left_open->close();

    say("");
    say("watch_held_too_long calls back once for each resource held past a threshold:");
    connection report_db("reports-db");
    ctxmgr::with(ctxmgr::watch_held_too_long(20ms,
                                             [](const ctxmgr::resource_info& r) {
                                                 say("  held too long: " + ctxmgr::describe(r));
                                             }),
                 [] { std::this_thread::sleep_for(80ms); });
    report_db.close();
    forgotten->close();
    say("both closed: at exit the tracker has nothing to report (CTXMGR_LEAKS=warn would");
    say("print one line per resource still live, =abort would then abort)");
}

const bool registered = tour::add_chapter(
    60, "Leak tracking: what is still open, and where it was opened", &tracking_chapter);

}  // namespace
