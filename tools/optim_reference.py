#!/usr/bin/env python3
"""Independent AdamW reference values for tests/test_optim.cpp (plain Python floats = IEEE doubles).

This is the textbook algorithm as the torch.optim.AdamW documentation writes it (Loshchilov & Hutter,
decoupled weight decay), deliberately in that form rather than the fused form the kernel uses:
    theta <- theta - lr*wd*theta
    m <- b1*m + (1-b1)*g ;  v <- b2*v + (1-b2)*g^2
    m_hat = m / (1-b1^t) ;  v_hat = v / (1-b2^t)
    theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)
Run: python3 tools/optim_reference.py   (the test quotes its output)
"""
import math

LR, WD, B1, B2, EPS = 0.1, 0.1, 0.9, 0.999, 1e-8
THETA0 = [1.0, -0.5, 0.25, 2.0, 0.75]
# One gradient vector per step. Element 2 has zero gradient at steps 1 and 3 (pure decay then), element 4 a
# gradient of the size of eps (the eps term halves its step).
GRADS = [
    [0.1, -0.2, 0.0, 1.5, 1e-8],
    [0.3, 0.1, -0.05, -1.0, 1e-8],
    [-0.2, 0.4, 0.0, 0.5, 1e-8],
]


def main():
    theta = list(THETA0)
    m = [0.0] * len(theta)
    v = [0.0] * len(theta)
    for t, g in enumerate(GRADS, start=1):
        for i in range(len(theta)):
            theta[i] = theta[i] - LR * WD * theta[i]
            m[i] = B1 * m[i] + (1 - B1) * g[i]
            v[i] = B2 * v[i] + (1 - B2) * g[i] * g[i]
            m_hat = m[i] / (1 - B1 ** t)
            v_hat = v[i] / (1 - B2 ** t)
            theta[i] = theta[i] - LR * m_hat / (math.sqrt(v_hat) + EPS)
        print(f"step {t}: theta = [" + ", ".join(repr(x) for x in theta) + "]")
    print("exp_avg    = [" + ", ".join(repr(x) for x in m) + "]")
    print("exp_avg_sq = [" + ", ".join(repr(x) for x in v) + "]")


if __name__ == "__main__":
    main()
