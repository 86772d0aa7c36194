//! Fuzzes the reader of the pickle inside `torch.save` files (RWKV `.pth`, mamba_ssm
//! `pytorch_model.bin`): any bytes as `data.pkl`. Besides no panic, no stack overflow and no
//! allocation over the limit, every tensor it accepts is a view inside its storage.
#![no_main]

use kvformats::torch_pickle::read_state_dict;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tensors) = read_state_dict(data) else { return };
    for (name, t) in &tensors {
        assert_eq!(t.size.len(), t.stride.len(), "{name}");
        assert!(t.offset >= 0 && t.storage.numel >= 0 && t.size.iter().chain(&t.stride).all(|&d| d >= 0), "{name}");
        if !t.size.contains(&0) {
            let last = t.size.iter().zip(&t.stride).fold(t.offset as i128, |acc, (&n, &s)| acc + (n as i128 - 1) * s as i128);
            assert!(last < t.storage.numel as i128, "{name}: view past its storage");
        }
    }
});
