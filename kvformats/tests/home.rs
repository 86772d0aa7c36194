//! The one rule for kvbench's cache directory: `$KVBENCH_HOME`, else the user cache directory
//! (which honours `$XDG_CACHE_HOME`). The only test in this binary, so changing the environment
//! races with nothing.

use std::path::PathBuf;

#[test]
fn kvbench_home_follows_kvbench_home_then_the_user_cache_dir() {
    std::env::set_var("KVBENCH_HOME", "/tmp/kvb-home-test");
    assert_eq!(kvformats::home::kvbench_home(), PathBuf::from("/tmp/kvb-home-test"));
    std::env::set_var("KVBENCH_HOME", "");
    std::env::set_var("XDG_CACHE_HOME", "/tmp/kvb-xdg-test");
    assert_eq!(kvformats::home::kvbench_home(), PathBuf::from("/tmp/kvb-xdg-test/kvbench"));
}
