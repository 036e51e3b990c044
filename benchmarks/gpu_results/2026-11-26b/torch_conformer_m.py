import time, torch, torchaudio, torch.nn.functional as F
dev = "cuda"
def bench(step, n_warm=5, n=20):
    for _ in range(n_warm): step()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): step()
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n
for name, d, h, ffn, L in [("M", 256, 4, 1024, 16)]:
    B, T = 64, 400  # 400 frames after 4x subsampling at 10 ms hop = 16 s audio each
    for compiled in (False, True):
        m = torchaudio.models.Conformer(input_dim=d, num_heads=h, ffn_dim=ffn, num_layers=L, depthwise_conv_kernel_size=31).to(dev)
        head = torch.nn.Linear(d, 32).to(dev)
        opt = torch.optim.AdamW(list(m.parameters()) + list(head.parameters()), lr=1e-3)
        x = torch.randn(B, T, d, device=dev); lens = torch.full((B,), T, device=dev)
        fwd = torch.compile(m) if compiled else m
        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y, _ = fwd(x, lens)
                loss = head(y).float().logsumexp(-1).mean()
            loss.backward(); opt.step()
        try:
            dt = bench(step)
        except Exception as e:
            print(name, compiled, "failed", type(e).__name__, str(e)[:200]); continue
        n = sum(p.numel() for p in m.parameters())
        print(f"torchaudio Conformer-{name} ({n/1e6:.1f}M) compiled={compiled} B={B} T={T}: {dt*1e3:.1f} ms/step, {B*T*0.04/dt:.0f} audio-s/s", flush=True)
