"""LAMB optimiser (You et al. 2020, "Large Batch Optimization for Deep Learning"), as used by
Alshazly et al.; tf_keras has none built in."""

from __future__ import annotations



import tensorflow as tf
import tf_keras as keras


class Lamb(keras.optimizers.Optimizer):
    """Adam moments with decoupled weight decay, scaled per layer by the trust ratio ||w|| / ||update||
    (1 where either norm is zero)."""

    def __init__(self, learning_rate: float = 1e-3, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-6, weight_decay_rate: float = 0.0, name: str = "Lamb", **kwargs):
        super().__init__(name=name, **kwargs)
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.beta_1, self.beta_2, self.epsilon, self.weight_decay_rate = beta_1, beta_2, epsilon, weight_decay_rate

    def build(self, var_list):
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self._built = True
        self._m = [self.add_variable_from_reference(v, "m") for v in var_list]
        self._v = [self.add_variable_from_reference(v, "v") for v in var_list]

    def update_step(self, gradient, variable):
        lr = tf.cast(self.learning_rate, variable.dtype)
        step = tf.cast(self.iterations + 1, variable.dtype)
        index = self._index_dict[self._var_key(variable)]
        m, v = self._m[index], self._v[index]
        m.assign(self.beta_1 * m + (1 - self.beta_1) * gradient)
        v.assign(self.beta_2 * v + (1 - self.beta_2) * tf.square(gradient))
        m_hat = m / (1 - tf.pow(tf.cast(self.beta_1, variable.dtype), step))
        v_hat = v / (1 - tf.pow(tf.cast(self.beta_2, variable.dtype), step))
        update = m_hat / (tf.sqrt(v_hat) + self.epsilon) + self.weight_decay_rate * variable
        w_norm, u_norm = tf.norm(variable), tf.norm(update)
        trust = tf.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, tf.ones_like(w_norm))
        variable.assign_sub(lr * trust * update)

    def get_config(self):
        config = super().get_config()
        config.update(learning_rate=self._serialize_hyperparameter(self._learning_rate), beta_1=self.beta_1,
                      beta_2=self.beta_2, epsilon=self.epsilon, weight_decay_rate=self.weight_decay_rate)
        return config
