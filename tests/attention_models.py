"""Attention subgraphs as the exporters write them (MatMul, scale, mask, Softmax, NaN guard, MatMul, head
transposes), with knobs for each optional part: the inputs of tests/test_nvrtc_fusion.py's attention tests."""
import numpy as np, onnx
from onnx import helper as h, numpy_helper as nh, TensorProto as T
def attn_model(path, B=1, H=2, Sq=37, Skv=45, D=24, DV=40, mask=True, guard=True, qscale=True, div=False, mask_shape=None, opset=17, v_seq_major=False):
    nodes=[]; inits=[]
    inputs=[h.make_tensor_value_info('q',T.FLOAT,[B,H,Sq,D]), h.make_tensor_value_info('k',T.FLOAT,[B,H,Skv,D]),
            h.make_tensor_value_info('v',T.FLOAT,[B,Skv,H,DV] if v_seq_major else [B,H,Skv,DV])]
    q='q'
    if qscale == "host":   # TorchScript's scaled_dot_product_attention: sqrt(1/sqrt(D)) computed from Shape(q)
        inits += [nh.from_array(np.array([-1],np.int64),'last'), nh.from_array(np.array(1.0,np.float32),'one')]
        nodes += [h.make_node('Shape',['q'],['qshape']), h.make_node('Gather',['qshape','last'],['d1'],axis=0),
                  h.make_node('Cast',['d1'],['df'],to=T.FLOAT), h.make_node('Sqrt',['df'],['sd_']),
                  h.make_node('Div',['one','sd_'],['inv']), h.make_node('Sqrt',['inv'],['cq'])]
        nodes.append(h.make_node('Mul',['q','cq'],['qs'])); q='qs'
    elif qscale:
        inits.append(nh.from_array(np.array(D**-0.25,np.float32),'cq')); nodes.append(h.make_node('Mul',['q','cq'],['qs'])); q='qs'
    nodes.append(h.make_node('Transpose',['k'],['kt'],perm=[0,1,3,2]))
    kt='kt'
    if qscale:
        if qscale != "host":
            inits.append(nh.from_array(np.array(D**-0.25,np.float32),'ck'))
        nodes.append(h.make_node('Mul',['kt','cq' if qscale == "host" else 'ck'],['kts'])); kt='kts'
    nodes.append(h.make_node('MatMul',[q,kt],['s'])); s='s'
    if div == "host":      # scores / sqrt(D) with D read from Shape(k)
        inits.append(nh.from_array(np.array([-1],np.int64),'lastk'))
        nodes += [h.make_node('Shape',['k'],['kshape']), h.make_node('Gather',['kshape','lastk'],['dk'],axis=0),
                  h.make_node('Cast',['dk'],['dkf'],to=T.FLOAT), h.make_node('Sqrt',['dkf'],['dv'])]
        nodes.append(h.make_node('Div',[s,'dv'],['sd'])); s='sd'
    elif div:
        inits.append(nh.from_array(np.array(2.0,np.float32),'dv')); nodes.append(h.make_node('Div',[s,'dv'],['sd'])); s='sd'
    if mask:
        ms = mask_shape or [B,1,1,Skv]
        inputs.append(h.make_tensor_value_info('m',T.FLOAT,ms)); nodes.append(h.make_node('Add',[s,'m'],['sm'])); s='sm'
    nodes.append(h.make_node('Softmax',[s],['p'],axis=-1)); p='p'
    if guard:
        inits.append(nh.from_array(np.array(0.0,np.float32),'z'))
        nodes += [h.make_node('IsNaN',['p'],['isn']), h.make_node('Where',['isn','z','p'],['pg'])]; p='pg'
    if v_seq_major:   # V as [B, S, H, DV], its head transpose before the product (read in place when fused)
        nodes.append(h.make_node('Transpose',['v'],['vt'],perm=[0,2,1,3]))
    nodes.append(h.make_node('MatMul',[p,'vt' if v_seq_major else 'v'],['o']))
    nodes.append(h.make_node('Transpose',['o'],['y'],perm=[0,2,1,3]))
    g=h.make_graph(nodes,'attn',inputs,[h.make_tensor_value_info('y',T.FLOAT,None)],inits)
    m=h.make_model(g,opset_imports=[h.make_opsetid('',opset)]); m.ir_version=8
    onnx.save(m,path); return path
